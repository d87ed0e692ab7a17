//! Tests of `tollgate serve`'s flags: durations and the admission webhook's
//! configuration.

use super::*;

#[test]
fn durations_parse() {
    assert_eq!(
        parse_duration("500ms").ok(),
        Some(Duration::from_millis(500))
    );
    assert_eq!(parse_duration("10s").ok(), Some(Duration::from_secs(10)));
    assert_eq!(parse_duration("2m").ok(), Some(Duration::from_secs(120)));
    assert!(parse_duration("ten").is_err());
    assert!(parse_duration("3d").is_err());
}

fn serve_args(args: &[&str]) -> Result<ServeArgs, clap::Error> {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }
    Cli::try_parse_from(["serve", "--insecure-dev"].iter().chain(args)).map(|c| c.serve)
}

fn webhook(args: &[&str]) -> anyhow::Result<Option<WebhookConfig>> {
    serve_args(args).map_err(anyhow::Error::from)?.webhook()
}

#[test]
fn webhook_flags_build_the_injection_options() {
    let cp = "https://tollgate.tollgate-system.svc:50051";
    assert!(webhook(&[]).ok().flatten().is_none(), "no --webhook-addr");

    let refused = |args: &[&str], says: &str| match webhook(args) {
        Ok(_) => panic!("{args:?} was taken"),
        Err(e) => assert!(format!("{e:#}").contains(says), "{args:?}: {e:#}"),
    };
    refused(
        &[
            "--webhook-addr",
            "127.0.0.1:8443",
            "--inject-control-plane",
            cp,
        ],
        "HTTPS only",
    );
    let tls = ["--tls-cert", "c.pem", "--tls-key", "k.pem"];
    let with_tls = |more: &[&str]| {
        let mut args = vec!["--webhook-addr", "127.0.0.1:8443"];
        args.extend(tls);
        args.extend(more);
        webhook(&args)
    };
    let refused_with_tls = |more: &[&str], says: &str| match with_tls(more) {
        Ok(_) => panic!("{more:?} was taken"),
        Err(e) => assert!(format!("{e:#}").contains(says), "{more:?}: {e:#}"),
    };
    refused_with_tls(&[], "--inject-control-plane");
    refused_with_tls(&["--inject-control-plane", "tollgate:50051"], "not a URL");
    refused_with_tls(
        &[
            "--inject-control-plane",
            cp,
            "--inject-upstream",
            "files=files.tools.svc",
        ],
        "NAME=URL",
    );
    // Injection flags without the webhook are a mistake clap reports.
    assert!(serve_args(&["--inject-control-plane", cp]).is_err());

    let config = with_tls(&[
        "--inject-control-plane",
        cp,
        "--inject-upstream",
        "files=http://files.tools.svc:8080/mcp",
        "--inject-upstream",
        "search=http://search.tools.svc/mcp",
    ])
    .ok()
    .flatten()
    .unwrap_or_else(|| panic!("a complete webhook configuration was refused"));
    assert_eq!(
        config.tls.cert,
        PathBuf::from("c.pem"),
        "default --tls-cert"
    );
    assert_eq!(config.tls.client_ca, None);
    assert_eq!(
        config.inject,
        inject::Options {
            image: format!("tollgate:{}", env!("CARGO_PKG_VERSION")),
            control_plane: cp.to_owned(),
            ca_config_map: None,
            identity_issuer: Some("tollgate".to_owned()),
            trust_domain: "cluster.local".to_owned(),
            upstreams: vec![
                "files=http://files.tools.svc:8080/mcp".to_owned(),
                "search=http://search.tools.svc/mcp".to_owned(),
            ],
        }
    );
    let own = with_tls(&[
        "--inject-control-plane",
        cp,
        "--webhook-cert",
        "w.pem",
        "--webhook-key",
        "wk.pem",
        "--inject-image",
        "registry.example/tollgate:1",
        "--inject-ca-config-map",
        "tollgate-ca",
        "--inject-no-identity",
    ])
    .ok()
    .flatten()
    .unwrap_or_else(|| panic!("--webhook-cert was refused"));
    assert_eq!(
        (own.tls.cert, own.tls.key),
        (PathBuf::from("w.pem"), PathBuf::from("wk.pem"))
    );
    assert_eq!(own.inject.image, "registry.example/tollgate:1");
    assert_eq!(own.inject.ca_config_map.as_deref(), Some("tollgate-ca"));
    assert_eq!(own.inject.identity_issuer, None, "--inject-no-identity");
}
