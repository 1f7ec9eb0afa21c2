//! What a finished request passes before it goes upstream, after
//! authentication and inspection: human approval (if its risk calls for
//! one), then the write-ahead record (if configured).
//!
//! A request's state lives in a `RequestSlot` shared between its own context
//! and the root context, because either may carry it on: the request's
//! callbacks, or the root when a JWKS fetch it was parked for answers. Calls
//! a gate makes answer in the context that made them: the request's
//! (matched through `RequestState::call`) or the root's (matched through
//! `Shared::root_calls`). Every answer ends in `resume`, which runs the gates
//! again on the effective request.

use std::cell::RefCell;
use std::rc::Rc;

use tracegate_policy::llm::Api;
use tracegate_policy::record::UpstreamSaw;
use tracegate_proto::v1::Identity;

use crate::ahead::{self, Ahead};
use crate::approvals::{self, ApprovalGate};
use crate::host;
use crate::root::Shared;

#[derive(Debug, Default)]
pub struct RequestState {
    /// For the record.
    pub identity: Option<Identity>,
    /// Waiting for a JWKS fetch.
    pub parked: bool,
    /// The request holds its headers until its body is inspected; the root
    /// must then not resume it (the body's last callback continues it).
    pub body_pending: bool,
    /// Complete and cleared by inspection: the gates may run.
    pub ready: bool,
    /// Answered locally (by the request's context or by the root).
    pub answered: bool,
    /// The API the request is for, to shape local error answers.
    pub api: Api,
    pub approval: ApprovalGate,
    pub ahead: Ahead,
    /// The call a gate made from the request's own context and waits for.
    pub call: Option<u32>,
    /// How much of the request has been let go upstream (for the record).
    pub upstream: UpstreamSaw,
}

/// Notes that the request went on this far (never less than before).
pub fn let_go(slot: &RequestSlot, what: UpstreamSaw) {
    let mut s = slot.borrow_mut();
    s.upstream = s.upstream.max(what);
}

pub type RequestSlot = Rc<RefCell<RequestState>>;

/// Which context is running the gates: it owns the calls they make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The request's own callback.
    Request,
    /// The root context, acting on request context `u32`.
    Root(u32),
}

/// What a gate says.
pub enum Gate {
    /// Passed (or not needed).
    Pass,
    /// A call is under way; the request waits.
    Wait,
    /// The request was answered locally (403, 503).
    Stop,
}

pub enum Flow {
    Continue,
    Wait,
    Answered,
}

/// Runs the gates of a ready request, as far as they go now.
pub fn proceed(shared: &Shared, slot: &RequestSlot, via: Via) -> Flow {
    {
        let s = slot.borrow();
        if s.answered {
            return Flow::Answered;
        }
        if s.parked || !s.ready || s.call.is_some() {
            return Flow::Wait;
        }
    }
    for gate in [approvals::advance, ahead::advance] {
        match gate(shared, slot, via) {
            Gate::Pass => {}
            Gate::Wait => return Flow::Wait,
            Gate::Stop => return Flow::Answered,
        }
    }
    Flow::Continue
}

/// After an asynchronous answer: runs the gates again and lets the
/// (effective) request go on if they all pass.
pub fn resume(shared: &Shared, slot: &RequestSlot, via: Via) {
    if let Flow::Continue = proceed(shared, slot, via) {
        // Gates run only on a complete request: all of it goes on.
        let_go(slot, UpstreamSaw::Request);
        host::resume_request();
    }
}

/// Registers a call a gate made, so its answer finds the request.
pub fn track_call(shared: &Shared, slot: &RequestSlot, via: Via, token: u32, purpose: Purpose) {
    match via {
        Via::Request => slot.borrow_mut().call = Some(token),
        Via::Root(context_id) => {
            shared
                .root_calls
                .borrow_mut()
                .insert(token, (context_id, slot.clone(), purpose));
        }
    }
}

/// What a root-made call is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Approval,
    WriteAhead,
}

/// Takes the root-made call with this token, if it is one and for this purpose.
pub fn take_root_call(shared: &Shared, token: u32, purpose: Purpose) -> Option<(u32, RequestSlot)> {
    let mut calls = shared.root_calls.borrow_mut();
    if calls.get(&token).is_some_and(|(_, _, p)| *p == purpose) {
        calls
            .remove(&token)
            .map(|(context, slot, _)| (context, slot))
    } else {
        None
    }
}
