//! The process's one HTTPS configuration: rustls with ring, trusting the
//! system's roots, which are read and parsed once, on first use, and
//! shared by every HTTPS client the API function makes: the JWKS client
//! and the AWS SDK's (STS, Secrets Manager). The SDK's own HTTP client
//! (hyper, its own rustls configuration) parsed the store again for each
//! connector it made, the JWKS client once more; this client is also
//! smaller (no HTTP/2 stack). The database's TLS is OpenSSL's
//! (`db::tls_connector`), with its own, narrower roots.

use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;

/// rustls (ring) trusting the system's roots, as native-tls would trust
/// them, without OpenSSL parsing every root certificate at cold start.
/// Built at most once per process.
pub fn system_tls() -> Result<rustls::ClientConfig, String> {
    static CONFIG: LazyLock<Result<Arc<rustls::ClientConfig>, String>> =
        LazyLock::new(|| system_roots().and_then(tls_with).map(Arc::new));
    CONFIG.as_ref().map(|c| (**c).clone()).map_err(Clone::clone)
}

fn system_roots() -> Result<rustls::RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(format!(
            "no system root certificates found ({} errors)",
            found.errors.len()
        ));
    }
    Ok(roots)
}

/// rustls (ring) trusting `roots` only.
pub fn tls_with(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The AWS SDK's HTTP client: reqwest on [`system_tls`], no redirects
/// (the SDK follows none), the SDK's connect and read timeouts. A client
/// per distinct timeout settings, each sharing the one TLS configuration.
pub fn aws_http_client() -> SharedHttpClient {
    SharedHttpClient::new(AwsHttpClient::default())
}

/// One connector per distinct timeout settings (the SDK asks per client
/// configuration), each on the one TLS configuration.
#[derive(Debug, Default)]
struct AwsHttpClient {
    connectors: Mutex<Vec<(Timeouts, SharedHttpConnector)>>,
}

type Timeouts = (Option<Duration>, Option<Duration>);

impl HttpClient for AwsHttpClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let key = (settings.connect_timeout(), settings.read_timeout());
        let mut connectors = self.connectors.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, connector)) = connectors.iter().find(|(k, _)| *k == key) {
            return connector.clone();
        }
        crate::token::install_tls_provider();
        let mut builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
        if let Some(timeout) = key.0 {
            builder = builder.connect_timeout(timeout);
        }
        if let Some(timeout) = key.1 {
            builder = builder.read_timeout(timeout);
        }
        // Without the system's roots, no root at all: every HTTPS call
        // then fails its handshake (closed), never reqwest's defaults.
        let tls = system_tls().or_else(|error| {
            tracing::warn!(%error, "AWS SDK TLS set-up failed; trusting no root");
            tls_with(rustls::RootCertStore::empty())
        });
        let client = tls.and_then(|tls| {
            builder
                .tls_backend_preconfigured(tls)
                .build()
                .map_err(|e| e.to_string())
        });
        let connector = SharedHttpConnector::new(AwsConnector(client));
        connectors.push((key, connector.clone()));
        connector
    }
}

#[derive(Debug)]
struct AwsConnector(Result<reqwest::Client, String>);

impl HttpConnector for AwsConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let client = match &self.0 {
            Ok(client) => client.clone(),
            Err(error) => {
                let error = format!("the AWS SDK's HTTP client could not be built: {error}");
                return HttpConnectorFuture::ready(Err(ConnectorError::other(error.into(), None)));
            }
        };
        HttpConnectorFuture::new(async move {
            let request = request
                .try_into_http1x()
                .map_err(|e| ConnectorError::user(e.into()))?;
            // STS and Secrets Manager requests are small, in-memory bodies.
            let request = request.map(|body| body.bytes().map(<[u8]>::to_vec).unwrap_or_default());
            let request =
                reqwest::Request::try_from(request).map_err(|e| ConnectorError::user(e.into()))?;
            let response = client.execute(request).await.map_err(connector_error)?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await.map_err(connector_error)?;
            let mut out = http::Response::new(SdkBody::from(body));
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            HttpResponse::try_from(out).map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

fn connector_error(error: reqwest::Error) -> ConnectorError {
    if error.is_timeout() {
        ConnectorError::timeout(error.into())
    } else {
        ConnectorError::io(error.into())
    }
}
