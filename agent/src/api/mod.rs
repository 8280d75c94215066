//! The local API: HTTP/1.1 over a unix socket that only root may open. Handlers are
//! thin; errors become statuses in one place ([`ApiError`]).
//!
//! | route | |
//! |---|---|
//! | `POST /v1/apply` | body: manifest YAML; all documents validated before any is applied |
//! | `GET /v1/pods`, `GET /v1/pods/{ns}/{name}` | Kubernetes `v1/Pod` objects with status |
//! | `DELETE /v1/pods/{ns}/{name}?gracePeriodSeconds=` | stops the pod within its grace period, then forgets it |
//! | `GET /v1/pods/{ns}/{name}/events` | recorded events |
//! | `GET /v1/events` | every pod's events |
//! | `GET /v1/{configmaps,secrets,deployments,jobs}` | stored objects (Deployments and Jobs with status) |
//! | `DELETE /v1/{configmaps,secrets,deployments,jobs}/{ns}/{name}` | forgets one; a Deployment's or Job's pods are deleted first |
//! | `GET /v1/pods/{ns}/{name}/log?container=&previous=&tail=&timestamps=&follow=` | CRI log, as text |
//! | `POST /v1/pods/{ns}/{name}/exec?container=&command=…&stdin=&tty=` | upgraded to a framed stream ([`exec`]) |
//! | `POST /v1/images/pull?image=` | NDJSON progress, then the image |
//! | `GET /v1/images` | pulled images |
//! | `POST /v1/images/prune` | removes images no pod uses; returns them |
//! | `GET /v1/metrics` | Prometheus text: pod start latency, HTTP requests refused over the cap |
//! | `GET /v1/stats/pod-starts` | the last 65,536 pod start latencies, in µs, in order, and how many in all |

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use crate::pod::Manager;

pub mod client;
pub mod exec;

use crate::http::{ApiError, Body, error_response, full, get, json_response, not_found, parse_query, tokio_stream};

/// Listens on `socket` (replacing a stale one, mode 0600) until the process ends.
pub async fn serve(socket: &Path, manager: Arc<Manager>) -> std::io::Result<()> {
    let _ = std::fs::remove_file(socket);
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = tokio::net::UnixListener::bind(socket)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    let mut refusing = false;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // out of descriptors or memory: the pods keep running, callers retry
                if !std::mem::replace(&mut refusing, true) {
                    tracing::warn!(error = %e, socket = %socket.display(), "cannot accept connections; retrying");
                    eprintln!("wasmlet: cannot accept connections on {}: {e}; retrying", socket.display());
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        if std::mem::replace(&mut refusing, false) {
            tracing::info!(socket = %socket.display(), "accepting connections again");
        }
        let mgr = manager.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let mgr = mgr.clone();
                async move { Ok::<_, Infallible>(handle(mgr, req).await.unwrap_or_else(error_response)) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) =
                hyper::server::conn::http1::Builder::new().serve_connection(io, service).with_upgrades().await
            {
                tracing::debug!(error = %e, "api connection ended");
            }
        });
    }
}

async fn handle(mgr: Arc<Manager>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query().unwrap_or(""));
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method().clone(), parts.as_slice()) {
        (Method::GET, ["v1", "healthz"]) => Ok(json_response(StatusCode::OK, &json!({"ok": true}))),
        (Method::GET, ["v1", "stats", "pod-starts"]) => {
            let (recent, total) = mgr.start_latencies();
            let micros: Vec<u128> = recent.iter().map(|d| d.as_micros()).collect();
            Ok(json_response(StatusCode::OK, &json!({"total": total, "microseconds": micros})))
        }
        (Method::GET, ["v1", "metrics"]) => Ok(Response::builder()
            .header("content-type", "text/plain; version=0.0.4")
            .body(full(metrics(&mgr)))
            .expect("valid response")),
        (Method::POST, ["v1", "apply"]) => {
            let body = req
                .into_body()
                .collect()
                .await
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?
                .to_bytes();
            let text = String::from_utf8(body.to_vec())
                .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "manifest is not UTF-8"))?;
            let pods = crate::spec::parse(&text)
                .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
            let applied = mgr.apply(pods).await?;
            Ok(json_response(StatusCode::OK, &serde_json::to_value(applied).expect("json")))
        }
        (Method::GET, ["v1", "pods"]) => {
            let ip = &mgr.node().ip;
            let pods: Vec<_> = mgr.list()?.iter().map(|r| crate::pod::view::pod_json(r, ip)).collect();
            Ok(json_response(StatusCode::OK, &json!(pods)))
        }
        (Method::GET, ["v1", "pods", ns, name]) => {
            let rec = mgr.get(&crate::pod::key(ns, name))?.ok_or_else(|| not_found(ns, name))?;
            Ok(json_response(StatusCode::OK, &crate::pod::view::pod_json(&rec, &mgr.node().ip)))
        }
        (Method::DELETE, ["v1", "pods", ns, name]) => {
            let grace = get(&query, "gracePeriodSeconds").and_then(|g| g.parse::<i64>().ok());
            mgr.delete_with_grace(&crate::pod::key(ns, name), grace).await.map_err(|e| match e {
                crate::pod::Error::NotFound(_) => not_found(ns, name),
                e => e.into(),
            })?;
            Ok(json_response(StatusCode::OK, &json!({"deleted": crate::pod::key(ns, name)})))
        }
        (Method::GET, ["v1", "pods", ns, name, "events"]) => {
            let rec = mgr.get(&crate::pod::key(ns, name))?.ok_or_else(|| not_found(ns, name))?;
            Ok(json_response(
                StatusCode::OK,
                &serde_json::to_value(mgr.events(&format!("{}/", rec.uid))?).expect("json"),
            ))
        }
        (Method::GET, ["v1", "events"]) => {
            Ok(json_response(StatusCode::OK, &serde_json::to_value(mgr.events("")?).expect("json")))
        }
        (Method::GET, ["v1", kind @ ("configmaps" | "secrets" | "deployments" | "jobs")]) => {
            Ok(json_response(StatusCode::OK, &json!(mgr.objects(object_kind(kind))?)))
        }
        (Method::DELETE, ["v1", kind @ ("configmaps" | "secrets" | "deployments" | "jobs"), ns, name]) => {
            if !mgr.delete_object(object_kind(kind), ns, name).await? {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("{kind} \"{name}\" not found in namespace \"{ns}\""),
                ));
            }
            Ok(json_response(StatusCode::OK, &json!({"deleted": format!("{ns}/{name}")})))
        }
        (Method::GET, ["v1", "pods", ns, name, "log"]) => crate::http::logs::respond(mgr, ns, name, &query).await,
        (Method::POST, ["v1", "pods", ns, name, "exec"]) => {
            let (ns, name) = (ns.to_string(), name.to_string());
            exec::respond(mgr, &ns, &name, &query, req).await
        }
        (Method::GET, ["v1", "images"]) => {
            let images: Vec<_> = mgr.images().list()?.iter().map(image_summary).collect();
            Ok(json_response(StatusCode::OK, &json!(images)))
        }
        (Method::POST, ["v1", "images", "pull"]) => pull(mgr, &query),
        (Method::POST, ["v1", "images", "prune"]) => {
            let removed: Vec<_> = mgr.prune_images(None).await?.iter().map(image_summary).collect();
            Ok(json_response(StatusCode::OK, &json!(removed)))
        }
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, format!("no route for {} {path}", req.method()))),
    }
}

/// Prometheus text: pod start latency quantiles (of the most recent starts) and the live
/// pod count.
fn metrics(mgr: &Manager) -> String {
    let (recent, _) = mgr.start_latencies();
    let mut samples: Vec<f64> = recent.iter().map(|d| d.as_secs_f64()).collect();
    samples.sort_by(|a, b| a.total_cmp(b));
    let q =
        |p: f64| samples.get(((samples.len() as f64 * p).ceil() as usize).saturating_sub(1)).copied().unwrap_or(0.0);
    let mut out =
        String::from("# HELP wasmlet_pod_start_duration_seconds Pod accepted (stored) to all containers running.\n");
    out.push_str("# TYPE wasmlet_pod_start_duration_seconds summary\n");
    for p in [0.5, 0.9, 0.99] {
        out.push_str(&format!("wasmlet_pod_start_duration_seconds{{quantile=\"{p}\"}} {:.9}\n", q(p)));
    }
    let totals = mgr.start_totals();
    out.push_str(&format!("wasmlet_pod_start_duration_seconds_sum {:.9}\n", totals.sum));
    out.push_str(&format!("wasmlet_pod_start_duration_seconds_count {}\n", totals.count));
    out.push_str(
        "# HELP wasmlet_http_requests_rejected_total Requests refused with 503 for being over a container's http-max-concurrency.\n",
    );
    out.push_str(&format!(
        "# TYPE wasmlet_http_requests_rejected_total counter\nwasmlet_http_requests_rejected_total {}\n",
        mgr.runtimes().metrics().http_rejected
    ));
    out.push_str(&format!("# TYPE wasmlet_pods gauge\nwasmlet_pods {}\n", mgr.list().map(|l| l.len()).unwrap_or(0)));
    out
}

fn object_kind(plural: &str) -> &'static str {
    match plural {
        "secrets" => "Secret",
        "deployments" => "Deployment",
        "jobs" => "Job",
        _ => "ConfigMap",
    }
}

pub fn image_summary(r: &crate::image::ImageRecord) -> serde_json::Value {
    json!({
        "reference": r.reference, "digest": r.digest.to_string(), "kind": r.kind_name(), "size": r.size,
        "pulledAt": r.pulled_at, "lastUsed": r.last_used,
    })
}

fn pull(mgr: Arc<Manager>, query: &[(String, String)]) -> Result<Response<Body>, ApiError> {
    let image = get(query, "image").ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "image is required"))?;
    let reference: registry_client::Reference =
        image.parse().map_err(|e: registry_client::Error| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Frame<Bytes>, std::io::Error>>();
    let line = |v: serde_json::Value| Ok(Frame::data(Bytes::from(format!("{v}\n"))));
    let progress_tx = tx.clone();
    let progress: registry_client::ProgressFn = Arc::new(move |p| {
        use registry_client::Progress as P;
        let v = match p {
            P::Resolved { blobs, .. } => {
                json!({"resolved": blobs.iter().map(|(d, s)| json!({"digest": d.to_string(), "size": s})).collect::<Vec<_>>()})
            }
            P::Blob { digest, done, total } => {
                json!({"blob": {"digest": digest.to_string(), "done": done, "total": total}})
            }
            P::BlobDone { digest, total, cached } => {
                json!({"done": {"digest": digest.to_string(), "total": total, "cached": cached}})
            }
            P::Unpacked { digest } => json!({"unpacked": digest.to_string()}),
        };
        let _ = progress_tx.send(line(v));
    });
    tokio::spawn(async move {
        let opts = registry_client::PullOptions { progress: Some(progress), ..Default::default() };
        let v = match mgr.images().pull(&reference, opts).await {
            Ok(r) => json!({"image": image_summary(&r)}),
            Err(e) => json!({"error": e.to_string()}),
        };
        let _ = tx.send(line(v));
    });
    let stream = tokio_stream(rx);
    Ok(Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(StreamBody::new(stream).boxed())
        .expect("valid response"))
}
