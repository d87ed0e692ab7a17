//! The decision reporter against an in-process `Rollouts` server on
//! loopback: accepted reports are deltas, refused and failed ones are sent
//! again with the next.

use std::sync::{Arc, Mutex};

use tollgate_policy::Outcome;
use tollgate_proto::v1::rollouts_server::{Rollouts, RolloutsServer};
use tollgate_proto::v1::{DecisionReport, DecisionReportAck};
use tonic::{Request, Response, Status};

use super::*;

/// Answers each report with the next scripted answer (accept once they run
/// out) and keeps every report it got.
#[derive(Clone, Default)]
struct Server {
    answers: Arc<Mutex<Vec<Result<String, Status>>>>,
    got: Arc<Mutex<Vec<DecisionReport>>>,
}

#[tonic::async_trait]
impl Rollouts for Server {
    async fn report_decisions(
        &self,
        request: Request<DecisionReport>,
    ) -> Result<Response<DecisionReportAck>, Status> {
        self.got.lock().unwrap().push(request.into_inner());
        let mut answers = self.answers.lock().unwrap();
        let answer = if answers.is_empty() {
            Ok(String::new())
        } else {
            answers.remove(0)
        };
        answer.map(|error| Response::new(DecisionReportAck { error }))
    }
}

fn calls(report: &DecisionReport) -> u64 {
    report.versions.iter().map(|v| v.calls).sum()
}

#[tokio::test]
async fn refused_and_failed_reports_are_sent_again_with_the_next() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::default();
    *server.answers.lock().unwrap() =
        vec![Ok("not now".into()), Err(Status::unavailable("restarting"))];
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RolloutsServer::new(server.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let metrics = Arc::new(Metrics::new());
    let decisions = Arc::new(Decisions::new(Arc::clone(&metrics)));
    let node = Node {
        id: "pod-a".into(),
        ..Node::default()
    };
    let connection = Connection::new(&format!("http://{addr}"), None).unwrap();
    let mut reporter = Reporter::new(
        node,
        Arc::clone(&decisions),
        Arc::clone(&metrics),
        DEFAULT_INTERVAL,
    );
    let tally = decisions.tally(1, false);

    assert_eq!(
        reporter.report(&connection).await,
        Sent::Nothing,
        "nothing decided: no report"
    );
    tally.count(Outcome::Allow);
    assert_eq!(reporter.report(&connection).await, Sent::Refused);
    tally.count(Outcome::Deny);
    assert_eq!(reporter.report(&connection).await, Sent::Failed);
    tally.count(Outcome::Allow);
    assert_eq!(reporter.report(&connection).await, Sent::Accepted);
    tally.count(Outcome::Deny);
    assert_eq!(reporter.report(&connection).await, Sent::Accepted);
    assert_eq!(reporter.report(&connection).await, Sent::Nothing);

    let got = server.got.lock().unwrap().clone();
    let sent: Vec<u64> = got.iter().map(calls).collect();
    assert_eq!(
        sent,
        [1, 2, 3, 1],
        "each report carries what was not accepted before"
    );
    assert!(
        got.iter()
            .all(|r| r.node.as_ref().is_some_and(|n| n.id == "pod-a"))
    );
    assert_eq!(got[2].versions[0].denied, 1);
    let text = metrics.encode();
    for line in [
        "tollgate_decision_reports_total{result=\"accepted\"} 2",
        "tollgate_decision_reports_total{result=\"refused\"} 1",
        "tollgate_decision_reports_total{result=\"failed\"} 1",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }

    // No control plane at all: the counts wait for one.
    serving.abort();
    let _ = serving.await;
    let gone = Connection::new(&format!("http://{addr}"), None).unwrap();
    tally.count(Outcome::Allow);
    assert_eq!(reporter.report(&gone).await, Sent::Failed);
    let kept = decisions.drain().report(0);
    assert_eq!(calls(&kept), 1, "restored after the failure");
}
