//! A programmable HTTPS server on 127.0.0.1 that records who sent what: each path answers
//! as told (a body, a redirect, a 401 challenge until a request brings credentials, or
//! nothing at all), and every request's path, query and Authorization header is kept. Two
//! of them on two ports are two hosts to a client: a registry and its token service, or
//! an artifact host and the CDN it redirects to.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::TestPki;

/// How a path answers.
#[derive(Clone, Debug)]
pub enum Reply {
    /// This status, headers and body.
    Canned {
        /// HTTP status.
        status: u16,
        /// Response headers.
        headers: Vec<(String, String)>,
        /// Body.
        body: Vec<u8>,
    },
    /// 401 with `WWW-Authenticate: <challenge>` to a request without Authorization; `then`
    /// to one with it.
    Challenge {
        /// The `WWW-Authenticate` value.
        challenge: String,
        /// The answer once credentials came.
        then: Box<Reply>,
    },
    /// Headers never come.
    Hang,
}

impl Reply {
    /// 200 with `body`.
    pub fn ok(body: impl Into<Vec<u8>>) -> Self {
        Reply::Canned {
            status: 200,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// 200 with `body` as `content_type`.
    pub fn typed(content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Reply::Canned {
            status: 200,
            headers: vec![("content-type".into(), content_type.into())],
            body: body.into(),
        }
    }

    /// A 307 to `location`.
    pub fn redirect(location: &str) -> Self {
        Reply::Canned {
            status: 307,
            headers: vec![("location".into(), location.into())],
            body: Vec::new(),
        }
    }

    /// `then`, once a request brings credentials; a 401 with `challenge` before.
    pub fn challenge(challenge: &str, then: Reply) -> Self {
        Reply::Challenge {
            challenge: challenge.into(),
            then: Box::new(then),
        }
    }
}

/// One request as it arrived.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Its path.
    pub path: String,
    /// Its query, if any.
    pub query: Option<String>,
    /// Its Authorization header, if any.
    pub authorization: Option<String>,
}

#[derive(Default)]
struct Book {
    replies: Mutex<HashMap<String, Reply>>,
    seen: Mutex<Vec<Seen>>,
}

/// A running recording server.
pub struct RecordingServer {
    /// `https://127.0.0.1:<port>`.
    pub base: String,
    book: Arc<Book>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RecordingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn respond(reply: Reply, authorized: bool) -> Option<Response<Full<Bytes>>> {
    let (status, headers, body) = match reply {
        Reply::Canned {
            status,
            headers,
            body,
        } => (status, headers, body),
        Reply::Challenge { then, .. } if authorized => return respond(*then, true),
        Reply::Challenge { challenge, .. } => (
            401,
            vec![("www-authenticate".into(), challenge)],
            b"{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}".to_vec(),
        ),
        Reply::Hang => return None,
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(&value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    Some(response)
}

async fn serve(
    book: Arc<Book>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let path = req.uri().path().to_string();
    book.seen.lock().expect("seen").push(Seen {
        path: path.clone(),
        query: req.uri().query().map(str::to_string),
        authorization: authorization.clone(),
    });
    let reply = book.replies.lock().expect("replies").get(&path).cloned();
    let reply = reply.unwrap_or(Reply::Canned {
        status: 404,
        headers: Vec::new(),
        body: b"{\"errors\":[{\"code\":\"NAME_UNKNOWN\"}]}".to_vec(),
    });
    match respond(reply, authorization.is_some()) {
        Some(response) => Ok(response),
        None => std::future::pending().await,
    }
}

impl RecordingServer {
    /// Starts a server with `pki`'s certificate.
    pub async fn start(pki: &TestPki) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("addr");
        let acceptor = pki.acceptor();
        let book = Arc::new(Book::default());
        let shared = book.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, book) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| serve(book.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        RecordingServer {
            base: format!("https://127.0.0.1:{}", addr.port()),
            book,
            task,
        }
    }

    /// `path` answers with `reply` from now on.
    pub fn reply(&self, path: &str, reply: Reply) {
        self.book
            .replies
            .lock()
            .expect("replies")
            .insert(path.into(), reply);
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.book.seen.lock().expect("seen").clone()
    }

    /// The Authorization headers sent to `path` so far (`None` for a request without one).
    pub fn authorizations(&self, path: &str) -> Vec<Option<String>> {
        self.seen()
            .into_iter()
            .filter(|s| s.path == path)
            .map(|s| s.authorization)
            .collect()
    }
}

/// A body of `n` spaces (valid JSON padding, for documents over a size limit).
pub fn filler(n: usize) -> Vec<u8> {
    vec![b' '; n]
}
