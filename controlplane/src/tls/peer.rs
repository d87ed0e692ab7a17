//! Who a sidecar is, from its client certificate, and whether a stream may
//! speak for the node it names.
//!
//! A node certificate carries the node id as a DNS name and
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>` as a URI
//! (what `tollgate certs issue` makes, and what a SPIFFE issuer or
//! cert-manager can be set up to make). The chain was verified against
//! `--client-ca` during the handshake; this module only reads names.

use std::sync::Arc;

use tokio_rustls::rustls::pki_types::CertificateDer;
use tollgate_proto::v1::Node;
use tonic::Status;
use x509_parser::extensions::GeneralName;

/// How the control plane knows which node a stream speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeIdentity {
    /// From the client certificate (`--client-ca`): a stream may only speak
    /// for a node its certificate names.
    Verified { trust_domain: String },
    /// As the node declares it (`--insecure-dev`): anyone who reaches the
    /// port can speak for any node.
    Declared,
}

/// The identity a verified client certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// `spiffe://…`
    pub spiffe_id: String,
    pub namespace: String,
    pub service_account: String,
    /// The DNS names: the node ids it may speak for.
    pub node_ids: Vec<String>,
}

/// Reads the identity from a certificate chain (leaf first), checking the
/// SPIFFE id is in `trust_domain`. The error says what the certificate
/// lacks.
pub fn identity(chain: &[CertificateDer<'_>], trust_domain: &str) -> Result<PeerIdentity, String> {
    let leaf = chain
        .first()
        .ok_or_else(|| "the connection carries no client certificate".to_owned())?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("the client certificate does not parse: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("the client certificate's subject alternative names: {e}"))?
        .ok_or_else(|| {
            "the client certificate has no subject alternative names (it needs the node id as a \
             DNS name and a spiffe:// URI; `tollgate certs issue` makes one)"
                .to_owned()
        })?;
    let mut node_ids = Vec::new();
    let mut spiffe = Vec::new();
    for name in &san.value.general_names {
        match name {
            GeneralName::DNSName(dns) => node_ids.push((*dns).to_owned()),
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => spiffe.push(*uri),
            _ => {}
        }
    }
    let [spiffe_id] = spiffe[..] else {
        return Err(format!(
            "the client certificate must carry exactly one spiffe:// URI, found {}",
            spiffe.len()
        ));
    };
    let (namespace, service_account) = parse_spiffe(spiffe_id, trust_domain)?;
    if node_ids.is_empty() {
        return Err(format!(
            "the client certificate ({spiffe_id}) names no node id (a DNS name)"
        ));
    }
    Ok(PeerIdentity {
        spiffe_id: spiffe_id.to_owned(),
        namespace,
        service_account,
        node_ids,
    })
}

/// `spiffe://<trust_domain>/ns/<ns>/sa/<sa>` → (ns, sa).
fn parse_spiffe(id: &str, trust_domain: &str) -> Result<(String, String), String> {
    let rest = id
        .strip_prefix("spiffe://")
        .and_then(|r| r.strip_prefix(trust_domain))
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(|| {
            format!(
                "the client certificate's {id} is not in this control plane's trust domain \
                 {trust_domain:?} (--trust-domain)"
            )
        })?;
    match rest.split('/').collect::<Vec<_>>()[..] {
        ["ns", ns, "sa", sa] if !ns.is_empty() && !sa.is_empty() => {
            Ok((ns.to_owned(), sa.to_owned()))
        }
        _ => Err(format!(
            "the client certificate's {id} is not of the form \
             spiffe://{trust_domain}/ns/<namespace>/sa/<service-account>"
        )),
    }
}

/// Checks that a stream whose connection presented `certs` may speak for
/// `node` (its first message's node), and fills in the namespace from the
/// certificate when the node left it empty. Returns the verified identity
/// (`None` under [`NodeIdentity::Declared`]).
pub fn admit(
    mode: &NodeIdentity,
    certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    node: &mut Node,
) -> Result<Option<PeerIdentity>, Status> {
    let NodeIdentity::Verified { trust_domain } = mode else {
        return Ok(None);
    };
    let Some(chain) = certs.filter(|c| !c.is_empty()) else {
        return Err(Status::unauthenticated(format!(
            "node {:?}: no client certificate; this control plane takes node identity from \
             certificates (--client-ca): start the sidecar with --cert and --key (make them with \
             `tollgate certs issue --node {} --namespace NS`)",
            node.id, node.id
        )));
    };
    let peer = identity(&chain, trust_domain)
        .map_err(|e| Status::unauthenticated(format!("node {:?}: {e}", node.id)))?;
    if !peer.node_ids.contains(&node.id) {
        return Err(Status::permission_denied(format!(
            "the stream claims node id {:?} but its certificate ({}) is for {}; a sidecar may \
             only speak for the node its certificate names (check --node-id against the \
             certificate)",
            node.id,
            peer.spiffe_id,
            peer.node_ids.join(", ")
        )));
    }
    if node.namespace.is_empty() {
        node.namespace.clone_from(&peer.namespace);
    } else if node.namespace != peer.namespace {
        return Err(Status::permission_denied(format!(
            "node {:?} declares namespace {:?} but its certificate ({}) is for namespace {:?}",
            node.id, node.namespace, peer.spiffe_id, peer.namespace
        )));
    }
    Ok(Some(peer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::certs::{CertificateAuthority, NodeSubject};
    use tokio_rustls::rustls::pki_types::pem::PemObject;

    fn chain(node: &str, ns: &str, td: &str) -> Arc<Vec<CertificateDer<'static>>> {
        let (ca, _) = CertificateAuthority::generate().expect("ca");
        let pem = ca
            .issue_node(&NodeSubject {
                node_id: node,
                namespace: ns,
                service_account: "agent",
                trust_domain: td,
            })
            .expect("issue");
        let der = CertificateDer::from_pem_slice(pem.cert.as_bytes()).expect("pem");
        Arc::new(vec![der])
    }

    fn node(id: &str, ns: &str) -> Node {
        Node {
            id: id.into(),
            namespace: ns.into(),
            ..Node::default()
        }
    }

    #[test]
    fn a_certificate_speaks_only_for_its_node() {
        let mode = NodeIdentity::Verified {
            trust_domain: "cluster.local".into(),
        };
        let certs = chain("node-a", "payments", "cluster.local");

        let mut a = node("node-a", "");
        let peer = admit(&mode, Some(certs.clone()), &mut a)
            .expect("node-a")
            .expect("verified");
        assert_eq!(
            peer.spiffe_id,
            "spiffe://cluster.local/ns/payments/sa/agent"
        );
        assert_eq!(a.namespace, "payments", "filled in from the certificate");

        let err = admit(&mode, Some(certs.clone()), &mut node("node-b", "")).expect_err("b");
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains("node-a"), "{}", err.message());

        let err = admit(&mode, Some(certs), &mut node("node-a", "other")).expect_err("ns");
        assert_eq!(err.code(), tonic::Code::PermissionDenied);

        let err = admit(&mode, None, &mut node("node-a", "")).expect_err("no cert");
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(err.message().contains("--cert"), "{}", err.message());

        let foreign = chain("node-a", "payments", "elsewhere.example");
        let err = admit(&mode, Some(foreign), &mut node("node-a", "")).expect_err("domain");
        assert!(err.message().contains("trust domain"), "{}", err.message());
    }

    #[test]
    fn declared_identity_takes_the_node_at_its_word() {
        let mut b = node("node-b", "x");
        assert_eq!(
            admit(&NodeIdentity::Declared, None, &mut b).ok(),
            Some(None)
        );
    }

    #[test]
    fn spiffe_ids_parse_strictly() {
        assert_eq!(
            parse_spiffe("spiffe://td/ns/a/sa/b", "td").ok(),
            Some(("a".into(), "b".into()))
        );
        for bad in [
            "spiffe://td/ns/a",
            "spiffe://td/ns//sa/b",
            "spiffe://tdx/ns/a/sa/b",
            "spiffe://td/ns/a/sa/b/c",
        ] {
            assert!(parse_spiffe(bad, "td").is_err(), "{bad}");
        }
    }
}
