//! What the standard OpenTelemetry environment variables ask for.

/// Whether traces are exported, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The OTLP/HTTP traces endpoint (`…/v1/traces`), when tracing is on.
    pub endpoint: Option<String>,
    /// `service.name` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` say otherwise.
    pub service_name: String,
}

impl Settings {
    /// From the process environment; `configured` is an endpoint from a config file (the
    /// environment wins, as the OpenTelemetry specification asks).
    pub fn from_env(service_name: &str, configured: Option<&str>) -> Self {
        Self::from_lookup(service_name, configured, |k| std::env::var(k).ok())
    }

    /// As [`Settings::from_env`], over any lookup (tests).
    pub fn from_lookup(
        service_name: &str,
        configured: Option<&str>,
        var: impl Fn(&str) -> Option<String>,
    ) -> Self {
        let off = var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
        let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        // The signal-specific variable is the full URL; the general one is a base to which the
        // signal's path is appended (OTLP exporter specification).
        let endpoint = if off {
            None
        } else if let Some(url) = nonempty(var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) {
            Some(url)
        } else {
            nonempty(var("OTEL_EXPORTER_OTLP_ENDPOINT"))
                .or_else(|| configured.map(str::to_owned))
                .map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
        };
        Self {
            endpoint,
            service_name: service_name.to_owned(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.endpoint.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::Settings;

    fn with(vars: &[(&str, &str)], configured: Option<&str>) -> Settings {
        Settings::from_lookup("tessera-server", configured, |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn off_unless_an_endpoint_is_given() {
        assert!(!with(&[], None).enabled());
        assert!(!with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")], None).enabled());
    }

    #[test]
    fn the_general_endpoint_gets_the_traces_path_and_the_specific_one_is_taken_whole() {
        let s = with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")], None);
        assert_eq!(s.endpoint.as_deref(), Some("http://c:4318/v1/traces"));
        let s = with(
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:9/x"),
            ],
            None,
        );
        assert_eq!(s.endpoint.as_deref(), Some("http://t:9/x"));
    }

    #[test]
    fn the_environment_wins_over_the_config_file_and_can_switch_it_off() {
        let s = with(
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318")],
            Some("http://file:4318"),
        );
        assert_eq!(s.endpoint.as_deref(), Some("http://env:4318/v1/traces"));
        let s = with(&[], Some("http://file:4318"));
        assert_eq!(s.endpoint.as_deref(), Some("http://file:4318/v1/traces"));
        assert!(!with(&[("OTEL_SDK_DISABLED", "TRUE")], Some("http://f")).enabled());
        assert!(!with(&[("OTEL_TRACES_EXPORTER", "none")], Some("http://f")).enabled());
    }
}
