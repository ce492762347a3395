//! What a server tells its operator: counters and gauges in the Prometheus (OpenMetrics)
//! text format, readiness, and the catalog of hosted models.
//!
//! One [`Metrics`] value is shared by `Arc` between a [`crate::server::Server`] (which counts
//! into it) and a [`crate::admin::AdminServer`] (which reads it); there is no global
//! registry. Every label value is bounded: refusal codes are `&'static str`, model labels
//! are the names the operator hosts (never a name a client sent).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `cipherml_sessions_active` | gauge | |
//! | `cipherml_sessions_total` | counter | |
//! | `cipherml_refusals_total` | counter | `code` |
//! | `cipherml_inferences_total` | counter | `model` |
//! | `cipherml_inference_duration_seconds` | histogram | `model` |
//! | `cipherml_received_bytes_total`, `cipherml_sent_bytes_total` | counter | |
//! | `cipherml_key_cache_entries`, `cipherml_key_cache_bytes` | gauge | |
//! | `cipherml_ready` | gauge (0 or 1) | |
//!
//! `Metrics` is `Send + Sync`; every method takes `&self`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::protocol::ModelInfo;

type CodeLabel = [(&'static str, &'static str); 1];
type ModelLabel = [(&'static str, String); 1];

/// Latency buckets: 1 ms to about 65 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The counters, gauges, readiness and model catalog of one server.
pub struct Metrics {
    registry: Registry,
    sessions_active: Gauge,
    sessions_total: Counter,
    refusals: Family<CodeLabel, Counter>,
    inferences: Family<ModelLabel, Counter>,
    latency: Family<ModelLabel, Histogram, fn() -> Histogram>,
    received_bytes: Counter,
    sent_bytes: Counter,
    key_cache_entries: Gauge,
    key_cache_bytes: Gauge,
    ready_gauge: Gauge,
    ready: AtomicBool,
    models: RwLock<Vec<ModelInfo>>,
    key_cache_source: RwLock<Option<KeyCacheSource>>,
}

/// Reads a key cache's size (entries, bytes) when the metrics are encoded.
type KeyCacheSource = Box<dyn Fn() -> (usize, usize) + Send + Sync>;

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("sessions_active", &self.sessions_active.get())
            .field("sessions_total", &self.sessions_total.get())
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// All counters at zero, not ready, no models.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let sessions_active = Gauge::default();
        let sessions_total = Counter::default();
        let refusals = Family::<CodeLabel, Counter>::default();
        let inferences = Family::<ModelLabel, Counter>::default();
        let latency = Family::<ModelLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let received_bytes = Counter::default();
        let sent_bytes = Counter::default();
        let key_cache_entries = Gauge::default();
        let key_cache_bytes = Gauge::default();
        let ready_gauge = Gauge::default();
        registry.register(
            "cipherml_sessions_active",
            "Sessions in progress",
            sessions_active.clone(),
        );
        // (The text encoder adds `_total` to counter names.)
        registry.register(
            "cipherml_sessions",
            "Sessions accepted since start",
            sessions_total.clone(),
        );
        registry.register(
            "cipherml_refusals",
            "Requests and connections refused, by refusal code",
            refusals.clone(),
        );
        registry.register(
            "cipherml_inferences",
            "Private inferences completed, by model",
            inferences.clone(),
        );
        registry.register(
            "cipherml_inference_duration_seconds",
            "Time of one private inference on the server, by model",
            latency.clone(),
        );
        registry.register(
            "cipherml_received_bytes",
            "Bytes received from clients",
            received_bytes.clone(),
        );
        registry.register(
            "cipherml_sent_bytes",
            "Bytes sent to clients",
            sent_bytes.clone(),
        );
        registry.register(
            "cipherml_key_cache_entries",
            "Evaluation-key sets held by the key cache",
            key_cache_entries.clone(),
        );
        registry.register(
            "cipherml_key_cache_bytes",
            "Bytes of evaluation keys held by the key cache",
            key_cache_bytes.clone(),
        );
        registry.register(
            "cipherml_ready",
            "1 while the models are loaded and the server accepts sessions",
            ready_gauge.clone(),
        );
        Self {
            registry,
            sessions_active,
            sessions_total,
            refusals,
            inferences,
            latency,
            received_bytes,
            sent_bytes,
            key_cache_entries,
            key_cache_bytes,
            ready_gauge,
            ready: AtomicBool::new(false),
            models: RwLock::new(Vec::new()),
            key_cache_source: RwLock::new(None),
        }
    }

    /// Counts a new session (total and active) and returns the guard that ends it: the
    /// active count drops when the guard does, even if the session panics.
    pub fn session(self: &Arc<Self>) -> SessionMeter {
        self.sessions_total.inc();
        self.sessions_active.inc();
        SessionMeter {
            metrics: self.clone(),
            received: 0,
            sent: 0,
        }
    }

    /// Counts a refusal with its code (e.g. `"busy"`, `"unauthorized"`).
    pub fn refusal(&self, code: &'static str) {
        self.refusals.get_or_create(&[("code", code)]).inc();
    }

    /// Counts one completed inference of a hosted model and its duration.
    pub fn inference(&self, model: &str, duration: Duration) {
        let label = [("model", model.to_string())];
        self.inferences.get_or_create(&label).inc();
        self.latency
            .get_or_create(&label)
            .observe(duration.as_secs_f64());
    }

    /// Sets the key cache's size (entries and bytes).
    pub fn set_key_cache(&self, entries: usize, bytes: usize) {
        self.key_cache_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.key_cache_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Reads the key cache's size (entries, bytes) from `source` every time the metrics are
    /// encoded, instead of waiting for [`Metrics::set_key_cache`].
    pub fn watch_key_cache(&self, source: impl Fn() -> (usize, usize) + Send + Sync + 'static) {
        *self
            .key_cache_source
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(Box::new(source));
    }

    /// The server is ready: its models are loaded and prepared, and it accepts sessions.
    pub fn set_serving(&self, models: Vec<ModelInfo>) {
        *self.models.write().unwrap_or_else(|e| e.into_inner()) = models;
        self.ready.store(true, Ordering::SeqCst);
        self.ready_gauge.set(1);
    }

    /// The server stopped accepting sessions (shutting down).
    pub fn set_stopped(&self) {
        self.ready.store(false, Ordering::SeqCst);
        self.ready_gauge.set(0);
    }

    /// Whether the server is ready (see [`Metrics::set_serving`]).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The hosted models (empty before [`Metrics::set_serving`]).
    pub fn models(&self) -> Vec<ModelInfo> {
        self.models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sessions in progress.
    pub fn sessions_active(&self) -> i64 {
        self.sessions_active.get()
    }

    /// Sessions accepted since start.
    pub fn sessions_total(&self) -> u64 {
        self.sessions_total.get()
    }

    /// Every metric in the OpenMetrics text format (which Prometheus reads), ending with
    /// `# EOF`.
    pub fn encode(&self) -> String {
        if let Some(source) = &*self
            .key_cache_source
            .read()
            .unwrap_or_else(|e| e.into_inner())
        {
            let (entries, bytes) = source();
            self.set_key_cache(entries, bytes);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    fn add_bytes(&self, received: u64, sent: u64) {
        self.received_bytes.inc_by(received);
        self.sent_bytes.inc_by(sent);
    }
}

/// One session's share of the [`Metrics`]: ends the session (active count) on drop and
/// adds the session's bytes as they grow.
#[derive(Debug)]
pub struct SessionMeter {
    metrics: Arc<Metrics>,
    received: u64,
    sent: u64,
}

impl SessionMeter {
    /// The metrics it counts into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Reports the session's byte totals so far (received from and sent to the client);
    /// the increase since the last report is added to the counters.
    pub fn bytes(&mut self, received: u64, sent: u64) {
        let (r, s) = (
            received.saturating_sub(self.received),
            sent.saturating_sub(self.sent),
        );
        self.received = self.received.max(received);
        self.sent = self.sent.max(sent);
        self.metrics.add_bytes(r, s);
    }
}

impl Drop for SessionMeter {
    fn drop(&mut self) {
        self.metrics.sessions_active.dec();
    }
}

/// A counter's value in an OpenMetrics text (`name{labels} value`), for tests and tools:
/// `None` if the sample is absent. `sample` is the text before the value, e.g.
/// `cipherml_inferences_total{model="m"}`.
pub fn sample_value(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(sample)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_move_and_encode() {
        let m = Arc::new(Metrics::new());
        let text = m.encode();
        assert_eq!(sample_value(&text, "cipherml_sessions_total"), Some(0.0));
        assert_eq!(sample_value(&text, "cipherml_ready"), Some(0.0));
        {
            let mut s = m.session();
            let _t = m.session();
            assert_eq!(m.sessions_active(), 2);
            s.bytes(100, 40);
            s.bytes(150, 40);
            m.inference("digits", Duration::from_millis(3));
            m.inference("digits", Duration::from_millis(5));
            m.refusal("busy");
        }
        m.set_key_cache(3, 4096);
        let text = m.encode();
        assert_eq!(m.sessions_active(), 0, "guards end their sessions");
        assert_eq!(sample_value(&text, "cipherml_sessions_total"), Some(2.0));
        assert_eq!(sample_value(&text, "cipherml_sessions_active"), Some(0.0));
        assert_eq!(
            sample_value(&text, "cipherml_inferences_total{model=\"digits\"}"),
            Some(2.0)
        );
        assert_eq!(
            sample_value(&text, "cipherml_refusals_total{code=\"busy\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample_value(&text, "cipherml_received_bytes_total"),
            Some(150.0)
        );
        assert_eq!(sample_value(&text, "cipherml_sent_bytes_total"), Some(40.0));
        assert_eq!(sample_value(&text, "cipherml_key_cache_entries"), Some(3.0));
        assert_eq!(
            sample_value(&text, "cipherml_key_cache_bytes"),
            Some(4096.0)
        );
        // 3 ms and 5 ms: both under the 8 ms bucket, neither under 2 ms.
        let bucket = |le: &str| {
            sample_value(
                &text,
                &format!(
                    "cipherml_inference_duration_seconds_bucket{{le=\"{le}\",model=\"digits\"}}"
                ),
            )
        };
        assert_eq!(bucket("0.002"), Some(0.0), "{text}");
        assert_eq!(bucket("0.008"), Some(2.0));
        assert_eq!(
            sample_value(
                &text,
                "cipherml_inference_duration_seconds_count{model=\"digits\"}"
            ),
            Some(2.0)
        );
        assert!(text.trim_end().ends_with("# EOF"));
    }

    #[test]
    fn readiness_follows_the_server() {
        let m = Metrics::new();
        assert!(!m.is_ready());
        m.set_serving(Vec::new());
        assert!(m.is_ready());
        assert_eq!(sample_value(&m.encode(), "cipherml_ready"), Some(1.0));
        m.set_stopped();
        assert!(!m.is_ready());
    }

    #[test]
    fn a_watched_key_cache_is_read_at_each_encoding() {
        let m = Metrics::new();
        let size = Arc::new(std::sync::atomic::AtomicUsize::new(2));
        let s = size.clone();
        m.watch_key_cache(move || (s.load(Ordering::SeqCst), 1000));
        assert_eq!(
            sample_value(&m.encode(), "cipherml_key_cache_entries"),
            Some(2.0)
        );
        size.store(5, Ordering::SeqCst);
        let text = m.encode();
        assert_eq!(sample_value(&text, "cipherml_key_cache_entries"), Some(5.0));
        assert_eq!(
            sample_value(&text, "cipherml_key_cache_bytes"),
            Some(1000.0)
        );
    }
}
