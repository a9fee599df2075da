//! A tiny middleware abstraction with nameable tower layer types (axum's `from_fn` layers
//! cannot be named in a public signature).

use std::convert::Infallible;
use std::fmt;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use futures::future::BoxFuture;
use tower::{Layer, Service};

/// A middleware of a simulator: sees each request, may answer it itself or pass it on.
///
/// [`Faults`](super::Faults), [`FixedWindowLimiter`](super::FixedWindowLimiter) and
/// [`SimStats`](super::SimStats) are intercepts; a platform simulator may write its own (an
/// auth check, say) and add it with `router.layer(my_intercept.layer())`.
pub trait Intercept: Clone + Send + Sync + 'static {
    /// Handles `req`, calling `next.run(req)` to pass it on.
    fn intercept(&self, req: Request, next: Next) -> BoxFuture<'static, Response>;

    /// This intercept as a tower layer for [`axum::Router::layer`].
    fn layer(&self) -> SimLayer<Self> {
        SimLayer {
            intercept: self.clone(),
        }
    }
}

/// The rest of the stack after an [`Intercept`].
pub struct Next {
    call: Box<dyn FnOnce(Request) -> BoxFuture<'static, Response> + Send>,
}

impl Next {
    /// Passes the request on and returns the answer.
    pub async fn run(self, req: Request) -> Response {
        (self.call)(req).await
    }
}

impl fmt::Debug for Next {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Next")
    }
}

/// The tower layer of an [`Intercept`].
#[derive(Debug, Clone)]
pub struct SimLayer<I> {
    intercept: I,
}

impl<S, I: Clone> Layer<S> for SimLayer<I> {
    type Service = SimService<S, I>;

    fn layer(&self, inner: S) -> Self::Service {
        SimService {
            inner,
            intercept: self.intercept.clone(),
        }
    }
}

/// The tower service of an [`Intercept`] around the inner service `S`.
#[derive(Debug, Clone)]
pub struct SimService<S, I> {
    inner: S,
    intercept: I,
}

impl<S, I> Service<Request> for SimService<S, I>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    I: Intercept,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The clone that was driven to readiness is the one we call (tower's usual dance).
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let next = Next {
            call: Box::new(move |req| {
                Box::pin(async move {
                    match ready.call(req).await {
                        Ok(resp) => resp,
                        Err(never) => match never {},
                    }
                })
            }),
        };
        let fut = self.intercept.intercept(req, next);
        Box::pin(async move { Ok(fut.await) })
    }
}
