//! The life of one HTTP exchange as a state machine: events in (headers, a
//! body chunk, keys ready, a call answered, the end), effects out (set a
//! header, replace a body, answer locally, make a call, resume, enqueue the
//! record). No host calls: the filter's worker feeds events and carries out
//! the effects; the scenario tests here do the same with a fake host.
//!
//! - `request`: headers and body: judging, authentication, holding.
//! - `gates`: what a complete request passes before it goes upstream: a
//!   person's approval, then its record written ahead.
//! - `response`: masking the answer, whole or as a stream of events.
//! - `finish`: the record, when the exchange ends.
//! - `reply`: tracegate's own answers, in each API's error shape.
//! - `gateway`: what one worker knows across exchanges.

mod access;
mod finish;
mod gates;
pub mod gateway;
mod reply;
mod request;
mod response;
#[cfg(test)]
mod tests;

pub use gateway::{Admission, Gateway};
pub use reply::{LocalReply, Refusal};

use tracegate_proto::v1::{Identity, Record};

use crate::access::{AnswerGuard, Facts};
use crate::inspect::{ExchangeInspection, Mark};
use crate::jwt::{Extracted, Reason};
use crate::llm::sse::SseMasker;
use crate::llm::usage::{Asked, UsageReader};
use crate::llm::Api;
use crate::mask::Tokens;
use crate::record::{ExchangeRecorder, UpstreamSaw};
use access::AccessState;
use gates::{AheadGate, ApprovalGate};

/// What the exchange reads from its surroundings. The filter answers from
/// the host; tests from fixtures.
pub trait Host {
    /// Wall clock, Unix nanoseconds.
    fn now_nanos(&self) -> i64;
    /// Random bytes for a record id.
    fn random(&self) -> [u8; 10];
    /// `len` bytes from `start` of the request body the current event is
    /// about (all of it received so far, while it is held).
    fn request_body(&self, start: usize, len: usize) -> Option<Vec<u8>>;
    /// Likewise of the response body.
    fn response_body(&self, start: usize, len: usize) -> Option<Vec<u8>>;
    /// The proxy's final response code, asked for at the end only when the
    /// exchange saw no response status (in Envoy a property read costs a
    /// few µs per request).
    fn response_code(&self) -> Option<u64>;
}

/// Something that happened to the exchange.
#[derive(Debug)]
pub enum Event<'a> {
    /// The request's headers (pseudo-headers included), in order.
    RequestHeaders {
        headers: &'a [(String, String)],
        end_of_stream: bool,
    },
    /// More request body: `size` is the chunk's length, or everything
    /// received so far while the body is held.
    RequestBody {
        size: usize,
        end_of_stream: bool,
    },
    /// The request ended with trailers (HTTP/2): its body is complete.
    RequestTrailers,
    /// The keys the exchange was parked for arrived (or their fetch failed).
    KeysReady,
    /// A call the exchange made was answered.
    Answered {
        call: CallKind,
        reply: Reply,
    },
    ResponseHeaders {
        status: u32,
        content_type: String,
        content_encoding: String,
        end_of_stream: bool,
    },
    ResponseBody {
        size: usize,
        end_of_stream: bool,
    },
    /// The exchange ended (answered, reset or abandoned): the proxy's
    /// response code details (`via_upstream` for the upstream's answers).
    End {
        code_details: Option<String>,
    },
}

/// What a call is for: the exchange accepts an answer only for the call it
/// waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    Approval,
    WriteAhead,
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// An HTTP answer: its status (`None`: no response, e.g. a timeout) and
    /// body.
    Http { status: Option<u32>, body: Vec<u8> },
    /// A gRPC answer: its status (0 = OK) and message.
    Grpc { status: u32, message: Vec<u8> },
    /// The call could not be made; why.
    NotSent(String),
}

/// A call for the worker to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Http {
        cluster: String,
        headers: Vec<(&'static str, String)>,
        body: Option<Vec<u8>>,
        timeout_ms: u64,
    },
    Grpc {
        cluster: String,
        service: &'static str,
        method: &'static str,
        message: Vec<u8>,
        timeout_ms: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// What the worker is to do.
#[derive(Debug)]
pub enum Effect {
    /// Sets (`Some`) or removes (`None`) a request header.
    SetRequestHeader(String, Option<String>),
    SetResponseHeader(&'static str, Option<String>),
    /// Replaces the first `len` bytes of the request body buffer.
    ReplaceRequestBody {
        len: usize,
        bytes: Vec<u8>,
    },
    ReplaceResponseBody {
        len: usize,
        bytes: Vec<u8>,
    },
    /// Answers the request locally; the upstream never sees it.
    Respond(LocalReply),
    /// Makes a call; its answer comes back as `Event::Answered` (a call that
    /// cannot be made, as `Reply::NotSent` at once).
    Call(CallKind, Call),
    /// Lets a paused request go on (after an asynchronous event).
    Resume,
    /// Hands a record to the outbox (using the exchange's reservation).
    Enqueue {
        record: Box<Record>,
        reserved: bool,
    },
    Add(Stat, u64),
    Log(Level, String),
}

/// The worker's stats (`wasmcustom.tracegate.*` in Envoy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stat {
    RecordsExported,
    RecordsDropped,
    ExportFailures,
    /// Detector findings in requests.
    Findings,
    /// Requests answered 403 by a block rule.
    Blocked,
    /// Requests refused as uninspectable (400, 413, 415, 502).
    Refused,
    /// Requests answered 503 because they could not be recorded (fail_closed).
    UnrecordedRefused,
    /// Request records acknowledged before forwarding (write_ahead).
    WrittenAhead,
    /// Write-ahead calls that failed or were refused.
    WriteAheadFailed,
    /// Requests whose risk called for approval.
    ApprovalRequested,
    /// ...forwarded with an approval (or on timeout with on_timeout: forward).
    ApprovalApproved,
    /// ...answered 403: denied, expired, grant refused, service unavailable.
    ApprovalRefused,
    /// ...of which because the approval service failed.
    ApprovalUnavailable,
    JwtVerified,
    JwtCacheHits,
    JwtNegativeCacheHits,
    JwtAnonymous,
    JwtRejected(Reason),
    JwksFetched,
    JwksFetchFailed,
    /// Requests an access rule refused, by the rule's index (the rules'
    /// count: the default).
    AccessDenied(usize),
    /// Answers withheld because they called a tool the rule does not allow.
    AccessAnswerDenied(usize),
}

impl Stat {
    const PLAIN: [Stat; 19] = [
        Stat::RecordsExported,
        Stat::RecordsDropped,
        Stat::ExportFailures,
        Stat::Findings,
        Stat::Blocked,
        Stat::Refused,
        Stat::UnrecordedRefused,
        Stat::WrittenAhead,
        Stat::WriteAheadFailed,
        Stat::ApprovalRequested,
        Stat::ApprovalApproved,
        Stat::ApprovalRefused,
        Stat::ApprovalUnavailable,
        Stat::JwtVerified,
        Stat::JwtCacheHits,
        Stat::JwtNegativeCacheHits,
        Stat::JwtAnonymous,
        Stat::JwksFetched,
        Stat::JwksFetchFailed,
    ];

    /// Every stat, each once; `index` is its position here.
    pub fn all() -> impl Iterator<Item = Stat> {
        Stat::PLAIN
            .into_iter()
            .chain(Reason::ALL.into_iter().map(Stat::JwtRejected))
    }

    /// Every stat of a policy: the fixed ones, then two per access rule
    /// and the default, named after them.
    pub fn all_for(policy: &crate::Policy) -> Vec<(Stat, String)> {
        let mut all: Vec<(Stat, String)> = Stat::all().map(|s| (s, s.name())).collect();
        for (i, id) in policy.access.iter().flat_map(|a| a.ids()).enumerate() {
            all.push((
                Stat::AccessDenied(i),
                format!("tracegate.access.{id}.denied"),
            ));
            all.push((
                Stat::AccessAnswerDenied(i),
                format!("tracegate.access.{id}.answers_denied"),
            ));
        }
        all
    }

    pub fn index(self) -> usize {
        let fixed = Stat::PLAIN.len() + Reason::ALL.len();
        match self {
            Stat::JwtRejected(r) => {
                Stat::PLAIN.len() + Reason::ALL.iter().position(|x| *x == r).unwrap_or(0)
            }
            Stat::AccessDenied(i) => fixed + 2 * i,
            Stat::AccessAnswerDenied(i) => fixed + 2 * i + 1,
            s => Stat::PLAIN.iter().position(|x| *x == s).unwrap_or(0),
        }
    }

    /// Its name in Envoy's stats (without the `wasmcustom.` prefix).
    pub fn name(self) -> String {
        let name = match self {
            Stat::RecordsExported => "records_exported",
            Stat::RecordsDropped => "records_dropped",
            Stat::ExportFailures => "export_failures",
            Stat::Findings => "inspect.findings",
            Stat::Blocked => "inspect.blocked",
            Stat::Refused => "inspect.refused",
            Stat::UnrecordedRefused => "recording.refused",
            Stat::WrittenAhead => "recording.written_ahead",
            Stat::WriteAheadFailed => "recording.write_ahead_failed",
            Stat::ApprovalRequested => "approval.requested",
            Stat::ApprovalApproved => "approval.approved",
            Stat::ApprovalRefused => "approval.refused",
            Stat::ApprovalUnavailable => "approval.unavailable",
            Stat::JwtVerified => "jwt.verified",
            Stat::JwtCacheHits => "jwt.cache_hits",
            Stat::JwtNegativeCacheHits => "jwt.negative_cache_hits",
            Stat::JwtAnonymous => "jwt.anonymous",
            Stat::JwtRejected(r) => return format!("tracegate.jwt.rejected.{}", r.as_str()),
            // Named after the rule's id by `all_for`.
            Stat::AccessDenied(i) => return format!("tracegate.access.{i}.denied"),
            Stat::AccessAnswerDenied(i) => return format!("tracegate.access.{i}.answers_denied"),
            Stat::JwksFetched => "jwks.fetched",
            Stat::JwksFetchFailed => "jwks.fetch_failed",
        };
        format!("tracegate.{name}")
    }
}

/// Adds one to a stat.
fn count(stat: Stat) -> Effect {
    Effect::Add(stat, 1)
}

/// What the callback that delivered an event returns to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

/// Where the exchange is in its life (the request side; the response has
/// its own `ResponseMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No headers yet.
    Start,
    /// The caller is decided; the body is still coming (held, or streaming
    /// through).
    Receiving,
    /// Paused until the caller's signing keys arrive; `complete`: the body
    /// has ended and been judged meanwhile.
    WaitingForKeys { complete: bool },
    /// Complete and judged: a person is asked.
    WaitingForApproval,
    /// Complete and judged: its record is sent ahead, the collector's
    /// acknowledgement awaited.
    WritingAhead,
    /// All of the request went upstream.
    Forwarded,
    /// tracegate answered it itself (401, 403, 4xx, 503).
    Answered,
    /// Its record was made.
    Ended,
}

/// How the request body travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyMode {
    /// As it comes (captured for the record).
    Streams,
    /// Held whole, judged at its end.
    Inspected,
    /// Held whole only for the gates: the record written ahead holds it,
    /// an approval is bound to its digest.
    HeldForGates,
}

/// How the response body is handled.
enum ResponseMode {
    /// Not inspected (no masking, or a binary type): captured as it passes.
    Pass,
    /// JSON or text: held whole, masked, sent.
    Whole,
    /// Server-sent events: masked event by event.
    Stream(Box<SseMasker>),
    /// No content type: the first bytes tell a stream from a whole body.
    Sniff,
}

/// One HTTP exchange.
pub struct Exchange {
    /// The proxy's id of the exchange (its context), as the gateway knows it.
    id: u32,
    phase: Phase,
    api: Api,
    /// A buffer place is reserved for its record (fail_closed).
    reserved: bool,
    recorder: Option<ExchangeRecorder>,
    /// The caller, for the record and the approval gate.
    identity: Option<Identity>,
    /// The token it parked with, decided again once the keys are there.
    parked_token: Option<Extracted>,
    body: BodyMode,
    /// Bytes of the held body received so far.
    body_bytes: usize,
    request_content_type: String,
    response: ResponseMode,
    tokens: Tokens,
    inspection: ExchangeInspection,
    /// `x-tracegate-approval` (async approval: the grant this retry redeems).
    grant: Option<String>,
    /// Where, in the request as sent, what made it risky is.
    marks: Vec<Mark>,
    approval: ApprovalGate,
    ahead: AheadGate,
    /// How much of the request went upstream (for the record).
    upstream: UpstreamSaw,
    access: AccessState,
    /// The path as it goes upstream, for access rules (kept only with them).
    access_path: String,
    /// What the body asks for, read by the inspector, until the access gate.
    access_facts: Option<Box<Facts>>,
    /// The tools the answer may call (the allowing rule restricts tools).
    guard: Option<AnswerGuard>,
    answer_tools_denied: Vec<String>,
    /// What the body asks for that usage depends on (model, streaming).
    asked: Asked,
    /// The answer's usage as read so far (an LLM API call); a stream's
    /// masker holds it while the stream runs.
    usage: Option<UsageReader>,
    /// tracegate asked upstream for usage the client did not ask for.
    hide_usage_chunk: bool,
}

impl Exchange {
    pub fn new(id: u32) -> Exchange {
        Exchange {
            id,
            phase: Phase::Start,
            api: Api::Other,
            reserved: false,
            recorder: None,
            identity: None,
            parked_token: None,
            body: BodyMode::Streams,
            body_bytes: 0,
            request_content_type: String::new(),
            response: ResponseMode::Pass,
            tokens: Tokens::default(),
            inspection: ExchangeInspection::default(),
            grant: None,
            marks: Vec::new(),
            approval: ApprovalGate::Off,
            ahead: AheadGate::Off,
            upstream: UpstreamSaw::Nothing,
            access: AccessState::Off,
            access_path: String::new(),
            access_facts: None,
            guard: None,
            answer_tools_denied: Vec::new(),
            asked: Asked::default(),
            usage: None,
            hide_usage_chunk: false,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Takes one event; appends the effects to `out` (in order). The
    /// returned action is for the proxy callback that delivered the event;
    /// after an asynchronous event (keys, a call's answer) it is `Pause`,
    /// and `Effect::Resume` says when the request goes on.
    pub fn on(
        &mut self,
        event: Event<'_>,
        gw: &mut Gateway,
        host: &dyn Host,
        out: &mut Vec<Effect>,
    ) -> Action {
        if self.phase == Phase::Ended {
            return Action::Continue;
        }
        match event {
            Event::RequestHeaders {
                headers,
                end_of_stream,
            } => self.request_headers(headers, end_of_stream, gw, host, out),
            Event::RequestBody {
                size,
                end_of_stream,
            } => self.request_body(size, end_of_stream, gw, host, out),
            Event::RequestTrailers => self.request_trailers(gw, host, out),
            Event::KeysReady => {
                self.keys_ready(gw, host, out);
                Action::Pause
            }
            Event::Answered { call, reply } => {
                self.answered(call, reply, gw, host, out);
                Action::Pause
            }
            Event::ResponseHeaders {
                status,
                content_type,
                content_encoding,
                end_of_stream,
            } => self.response_headers(
                status,
                content_type,
                &content_encoding,
                end_of_stream,
                gw,
                host,
                out,
            ),
            Event::ResponseBody {
                size,
                end_of_stream,
            } => self.response_body(size, end_of_stream, gw, host, out),
            Event::End { code_details } => {
                self.end(code_details, gw, host, out);
                Action::Continue
            }
        }
    }

    /// The exchange is gone without its end (no `End` event): gives back
    /// what it held in the gateway.
    pub fn abandon(&mut self, gw: &mut Gateway) {
        gw.unpark(self.id);
        if self.reserved {
            self.reserved = false;
            gw.release();
        }
        self.phase = Phase::Ended;
    }

    fn answered_locally(&self) -> bool {
        self.phase == Phase::Answered
    }

    /// Headers wait for the body too: it is inspected and
    /// `inspection.hold_headers` is on.
    fn headers_held(&self, gw: &Gateway) -> bool {
        self.body == BodyMode::Inspected
            && gw
                .policy
                .inspector
                .as_ref()
                .is_some_and(|i| i.config.hold_headers)
    }

    /// Answers locally with `reply`; later callbacks only record.
    fn respond(&mut self, reply: LocalReply, gw: &mut Gateway, out: &mut Vec<Effect>) {
        gw.unpark(self.id);
        self.phase = Phase::Answered;
        out.push(Effect::Respond(reply));
    }
}
