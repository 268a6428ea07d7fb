//! Health: every second, check what this process depends on (its database; for the gateway,
//! every upstream's own health) and report SERVING or NOT_SERVING for each served service and
//! for the whole server (""), so a load balancer or Kubernetes stops sending calls while a
//! dependency is down and resumes when it is back.

use std::time::Duration;

use tonic::transport::Channel;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::server::HealthReporter;

use citycredit_store::Db;

/// One dependency.
#[derive(Clone, Debug)]
pub enum Check {
    /// The database answers a trivial query.
    Database(Db),
    /// A remote service reports SERVING.
    Upstream { name: String, channel: Channel },
}

impl Check {
    async fn ok(&self, timeout: Duration) -> Result<(), String> {
        match self {
            Check::Database(db) => match tokio::time::timeout(timeout, db.ping()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("database: {e}")),
                Err(_) => Err("database: no answer".into()),
            },
            Check::Upstream { name, channel } => {
                let mut client = HealthClient::new(channel.clone());
                let call = client.check(HealthCheckRequest {
                    service: String::new(),
                });
                match tokio::time::timeout(timeout, call).await {
                    Ok(Ok(r))
                        if r.get_ref().status()
                            == tonic_health::pb::health_check_response::ServingStatus::Serving =>
                    {
                        Ok(())
                    }
                    Ok(Ok(_)) => Err(format!("{name}: not serving")),
                    Ok(Err(e)) => Err(format!("{name}: {}", e.message())),
                    Err(_) => Err(format!("{name}: no answer")),
                }
            }
        }
    }
}

/// Runs the checks once now (so health is right from the first call), then every `every`,
/// keeping `reporter` current for `services` and "".
pub async fn spawn(
    reporter: HealthReporter,
    services: Vec<String>,
    checks: Vec<Check>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    let mut state = State {
        reporter,
        services,
        checks,
        every,
        serving: None,
    };
    state.round().await;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            state.round().await;
        }
    })
}

struct State {
    reporter: HealthReporter,
    services: Vec<String>,
    checks: Vec<Check>,
    every: Duration,
    serving: Option<bool>,
}

impl State {
    async fn round(&mut self) {
        let mut problems = Vec::new();
        for c in &self.checks {
            if let Err(p) = c.ok(self.every.max(Duration::from_millis(500))).await {
                problems.push(p);
            }
        }
        let now = problems.is_empty();
        if self.serving == Some(now) {
            return;
        }
        let status = if now {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for s in &self.services {
            self.reporter.set_service_status(s.as_str(), status).await;
        }
        self.reporter.set_service_status("", status).await;
        if now {
            tracing::info!("health: serving");
        } else {
            tracing::warn!(problems = ?problems, "health: not serving");
        }
        self.serving = Some(now);
    }
}
