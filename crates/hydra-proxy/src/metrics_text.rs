//! The one home of the Prometheus text format for both daemons: the process-wide recorder
//! (`metrics-exporter-prometheus`), installed on first use, and its rendering for `/metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::PrometheusHandle;

/// The process-wide Prometheus recorder's handle, installed on first use; `None` when another
/// recorder was installed first (then `/metrics` answers an empty text).
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok().map(|()| handle)
        })
        .as_ref()
}

/// Every metric of this process in the text exposition format.
pub fn render() -> String {
    handle().map(PrometheusHandle::render).unwrap_or_default()
}
