// SPDX-License-Identifier: Apache-2.0
//! A one-shot reply slot that can be waited on by blocking threads and polled as a future.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::ClientError;

#[derive(Default)]
struct Inner {
    value: Option<Result<Value, ClientError>>,
    waker: Option<Waker>,
}

/// Where the reader thread puts one reply.
#[derive(Default)]
pub(super) struct Slot {
    inner: Mutex<Inner>,
    cv: Condvar,
}

impl Slot {
    /// Stores the reply (first one wins) and wakes the waiter.
    pub(super) fn fill(&self, value: Result<Value, ClientError>) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.value.is_none() {
            g.value = Some(value);
        }
        if let Some(w) = g.waker.take() {
            w.wake();
        }
        self.cv.notify_all();
    }
}

/// A pending command reply: `wait()` blocks, or `.await` it on any executor.
pub struct Reply<T> {
    slot: Arc<Slot>,
    decode: fn(Value) -> Result<T, ClientError>,
}

impl<T> Reply<T> {
    pub(super) fn new(slot: Arc<Slot>, decode: fn(Value) -> Result<T, ClientError>) -> Self {
        Reply { slot, decode }
    }

    fn finish(&self, v: Result<Value, ClientError>) -> Result<T, ClientError> {
        v.and_then(self.decode)
    }

    /// Blocks until the reply arrives.
    pub fn wait(self) -> Result<T, ClientError> {
        let mut g = self.slot.inner.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(v) = g.value.take() {
                drop(g);
                return self.finish(v);
            }
            g = self.slot.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Blocks until the reply arrives or `timeout` passes ([`ClientError::Timeout`]).
    pub fn wait_timeout(self, timeout: Duration) -> Result<T, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut g = self.slot.inner.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(v) = g.value.take() {
                drop(g);
                return self.finish(v);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout);
            }
            g = self
                .slot
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl<T> Future for Reply<T> {
    type Output = Result<T, ClientError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut g = self.slot.inner.lock().unwrap_or_else(|e| e.into_inner());
        match g.value.take() {
            Some(v) => {
                drop(g);
                Poll::Ready(self.finish(v))
            }
            None => {
                g.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
