//! The chain's per-request step machine: which filter runs next, which one
//! holds the request, and when the request may go on. Plain Rust over the
//! [`Stage`] trait (the wasm side's stages are the filters' own HTTP
//! contexts), tested natively with scripted stages.
//!
//! It follows what Envoy's filter manager does with one filter per concern:
//! * the filters run their request-headers step in order; a filter that
//!   **holds** (it waits for the body, or for a callout) stops the ones
//!   after it; a filter that **replies** (a denial) ends the request;
//! * body data (and trailers) go to every filter that reads the body and
//!   has run, in order, up to the one that holds; when that one lets the
//!   request go, the filters after it run their headers step and, if they
//!   read the body, get what has arrived (all of it, when it is complete);
//! * a filter that holds for a callout is resumed by [`Run::resume`] (its
//!   callout answered): the filters after it run, and the request goes on
//!   only when every filter has let it.
//!
//! Unlike separate Envoy filters, a filter that does not read the body
//! never sees body callbacks: one that holds for a callout keeps holding
//! until its answer comes, whatever data arrives meanwhile.
//!
//! The response goes the other way, as Envoy's filter manager runs
//! encoders: response headers, body data and trailers go to the filters
//! that ran for the request and implement response callbacks
//! ([`Stage::on_response`]), in reverse order. Each chunk goes through
//! them in turn, each one getting the chunk as the one before it left it
//! (a filter that replaces the chunk, e2ee's records, tells its new size
//! through [`Stage::body_size`]); a filter that holds stops the ones after
//! it until it lets go, and they then get what has been buffered, as on
//! the request side.

/// What a filter did in a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Let the request go on (to the next filter).
    Continue,
    /// Hold the request: the body, or a callout's answer, decides.
    Hold,
    /// A local reply has been sent: the request ends here.
    Replied,
}

/// One filter of the chain, as the step machine drives it.
pub trait Stage {
    fn headers(&mut self, end_of_stream: bool) -> Step;
    /// Body data; `size` is everything buffered so far.
    fn body(&mut self, size: usize, end_of_stream: bool) -> Step;
    /// Trailers: the body is complete.
    fn trailers(&mut self) -> Step;
    /// Whether the filter reads the request body (gets body callbacks).
    fn reads_body(&self) -> bool;
    /// Whether the filter gets the response callbacks (headers, body and
    /// trailers). Default: no.
    fn on_response(&self) -> bool {
        false
    }
    /// Response headers.
    fn response_headers(&mut self, _end_of_stream: bool) -> Step {
        Step::Continue
    }
    /// Response body data; `size` is the data as the filters before this
    /// one (in response order) left it.
    fn response_body(&mut self, _size: usize, _end_of_stream: bool) -> Step {
        Step::Continue
    }
    /// Response trailers: the response body is complete.
    fn response_trailers(&mut self) -> Step {
        Step::Continue
    }
    /// After a body step of this filter: the body's size now if the filter
    /// replaced it (request: the whole body; response: the chunk), `None`
    /// when it left it alone. Asked only when a filter after it gets the
    /// body.
    fn body_size(&mut self, _response: bool) -> Option<usize> {
        None
    }
}

/// Where the response stands: the response side of a [`Run`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Response {
    /// The filters that get the response callbacks, in response order.
    order: Vec<usize>,
    /// How many of `order` have run their response-headers step.
    reached: usize,
    /// The position (in `order`) of the filter that holds the response.
    held: Option<usize>,
    headers_eos: bool,
    /// The latest body callback: (size, end of stream).
    body: Option<(usize, bool)>,
    trailers: bool,
    replied: bool,
}

/// The state of one request's run through the chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Run {
    /// Filters that are off for this request (a route disables them).
    off: Vec<bool>,
    /// How many filters have run their headers step (or were skipped).
    reached: usize,
    /// The filter that holds the request.
    held: Option<usize>,
    headers_eos: bool,
    /// The latest body callback: (buffered size, end of stream).
    body: Option<(usize, bool)>,
    trailers: bool,
    replied: bool,
    /// Every filter has let the request go.
    passed: bool,
    response: Response,
}

impl Run {
    /// A run where the filters marked in `off` do not take part.
    pub fn new(off: Vec<bool>) -> Self {
        Run {
            off,
            ..Run::default()
        }
    }

    pub fn held(&self) -> Option<usize> {
        self.held
    }

    pub fn passed(&self) -> bool {
        self.passed
    }

    pub fn replied(&self) -> bool {
        self.replied
    }

    /// The filters that have run (or are running) for this request, in
    /// order: the ones whose response and log hooks apply.
    pub fn ran(&self) -> impl DoubleEndedIterator<Item = usize> + '_ {
        (0..self.reached).filter(|i| !self.is_off(*i))
    }

    fn is_off(&self, i: usize) -> bool {
        self.off.get(i).copied().unwrap_or(false)
    }

    /// A local reply was sent from outside a step (a callout's answer).
    pub fn mark_replied(&mut self) {
        self.replied = true;
        self.held = None;
    }

    /// The request headers arrived.
    pub fn headers<S: Stage>(&mut self, st: &mut [S], end_of_stream: bool) -> Step {
        self.headers_eos = end_of_stream;
        self.advance(st, 0)
    }

    /// Request body data arrived (`size`: everything buffered so far).
    pub fn body<S: Stage>(&mut self, st: &mut [S], size: usize, end_of_stream: bool) -> Step {
        self.body = Some((size, end_of_stream));
        self.deliver(st, false)
    }

    /// Request trailers arrived: the body is complete.
    pub fn trailers<S: Stage>(&mut self, st: &mut [S]) -> Step {
        self.trailers = true;
        self.deliver(st, true)
    }

    /// Filter `i`, which held the request for a callout, lets it go.
    pub fn resume<S: Stage>(&mut self, st: &mut [S], i: usize) -> Step {
        if self.replied {
            return Step::Replied;
        }
        if self.held != Some(i) {
            return self.now();
        }
        self.held = None;
        self.advance(st, i.saturating_add(1))
    }

    /// Where the request stands.
    fn now(&self) -> Step {
        if self.replied {
            Step::Replied
        } else if self.held.is_some() || !self.passed {
            Step::Hold
        } else {
            Step::Continue
        }
    }

    /// A body reader's body step. `first`: the filter has not seen the body
    /// yet (it was held behind another filter); when the trailers are in,
    /// it gets the body first, then the trailers, as Envoy's filter manager
    /// gives a filter it resumes.
    fn body_step<S: Stage>(&mut self, s: &mut S, first: bool) -> Option<Step> {
        if !s.reads_body() {
            return None;
        }
        let step = if self.trailers {
            match self.body {
                Some((n, _)) if first => match s.body(n, false) {
                    Step::Replied => Step::Replied,
                    _ => {
                        if let (Some(m), Some((size, _))) = (s.body_size(false), self.body.as_mut())
                        {
                            *size = m;
                        }
                        s.trailers()
                    }
                },
                _ => s.trailers(),
            }
        } else {
            let (n, eos) = self.body?;
            s.body(n, eos)
        };
        // A filter that replaced the body (e2ee's plaintext, sanitize's
        // rewrite): the filters after it get its size, as Envoy would give
        // them.
        if let (Some(n), Some((size, _))) = (s.body_size(false), self.body.as_mut()) {
            *size = n;
        }
        Some(step)
    }

    /// Runs the filters from `from` on (none of them has run yet).
    fn advance<S: Stage>(&mut self, st: &mut [S], from: usize) -> Step {
        for i in from..st.len() {
            self.reached = i + 1;
            if self.is_off(i) {
                continue;
            }
            let Some(s) = st.get_mut(i) else { break };
            let eos = self.headers_eos && self.body.is_none() && !self.trailers;
            let mut step = s.headers(eos);
            if step != Step::Replied {
                if let Some(b) = self.body_step(s, true) {
                    step = b;
                }
            }
            match step {
                Step::Continue => {}
                Step::Hold => {
                    self.held = Some(i);
                    return Step::Hold;
                }
                Step::Replied => {
                    self.replied = true;
                    return Step::Replied;
                }
            }
        }
        self.passed = true;
        Step::Continue
    }

    /// Body data or trailers: to every filter that reads the body, in
    /// order, up to the one that holds; on from there when it lets go.
    fn deliver<S: Stage>(&mut self, st: &mut [S], _trailers: bool) -> Step {
        if self.replied {
            return Step::Replied;
        }
        let upto = match self.held {
            Some(h) => h,
            None if self.passed => self.reached.saturating_sub(1),
            // Not started (no headers yet): nothing to deliver to.
            None => return Step::Hold,
        };
        let mut out = Step::Continue;
        for i in 0..=upto.min(st.len().saturating_sub(1)) {
            if self.is_off(i) || i >= self.reached {
                continue;
            }
            let Some(s) = st.get_mut(i) else { break };
            let Some(step) = self.body_step(s, false) else {
                if self.held == Some(i) {
                    // Holds for a callout: the body waits with it.
                    return Step::Hold;
                }
                continue;
            };
            match step {
                Step::Replied => {
                    self.replied = true;
                    self.held = None;
                    return Step::Replied;
                }
                Step::Hold => {
                    if self.held.is_some() {
                        // Still buffering: the rest waits.
                        return Step::Hold;
                    }
                    out = Step::Hold;
                }
                Step::Continue => {
                    if self.held == Some(i) {
                        self.held = None;
                        return self.advance(st, i + 1);
                    }
                }
            }
        }
        out
    }
}

/// The response side, in reverse order of the chain.
impl Run {
    /// The response headers arrived: the filters that ran for the request
    /// and implement response callbacks get them, last one first.
    pub fn response_headers<S: Stage>(&mut self, st: &mut [S], end_of_stream: bool) -> Step {
        let ran: Vec<usize> = self.ran().collect();
        let order = ran
            .into_iter()
            .rev()
            .filter(|i| st.get(*i).is_some_and(|s| s.on_response()))
            .collect();
        self.response = Response {
            order,
            headers_eos: end_of_stream,
            ..Response::default()
        };
        self.response_advance(st, 0)
    }

    /// Response body data arrived (`size`: the chunk, or everything
    /// buffered while the response is held).
    pub fn response_body<S: Stage>(
        &mut self,
        st: &mut [S],
        size: usize,
        end_of_stream: bool,
    ) -> Step {
        self.response.body = Some((size, end_of_stream));
        self.response_deliver(st)
    }

    /// Response trailers arrived: the response body is complete.
    pub fn response_trailers<S: Stage>(&mut self, st: &mut [S]) -> Step {
        self.response.trailers = true;
        self.response_deliver(st)
    }

    /// The filter that holds the response, by its index in the chain.
    pub fn response_held(&self) -> Option<usize> {
        let r = &self.response;
        r.held.and_then(|p| r.order.get(p).copied())
    }

    /// `first`: as [`Run::body_step`]'s.
    fn response_body_step<S: Stage>(&mut self, s: &mut S, first: bool, last: bool) -> Option<Step> {
        let r = &mut self.response;
        let step = if r.trailers {
            if let (true, Some((n, _))) = (first, r.body) {
                if s.response_body(n, false) == Step::Replied {
                    return Some(Step::Replied);
                }
                if let (false, Some(m), Some((size, _))) =
                    (last, s.body_size(true), r.body.as_mut())
                {
                    *size = m;
                }
            }
            s.response_trailers()
        } else {
            let (n, eos) = r.body?;
            s.response_body(n, eos)
        };
        if !last {
            if let (Some(n), Some((size, _))) = (s.body_size(true), r.body.as_mut()) {
                *size = n;
            }
        }
        Some(step)
    }

    /// The response filters from position `from` of the response order
    /// run their headers step (and get the body that has arrived).
    fn response_advance<S: Stage>(&mut self, st: &mut [S], from: usize) -> Step {
        let n = self.response.order.len();
        for pos in from..n {
            self.response.reached = pos + 1;
            let Some(i) = self.response.order.get(pos).copied() else {
                break;
            };
            let Some(s) = st.get_mut(i) else { break };
            let r = &self.response;
            let eos = r.headers_eos && r.body.is_none() && !r.trailers;
            let mut step = s.response_headers(eos);
            if step != Step::Replied {
                if let Some(b) = self.response_body_step(s, true, pos + 1 == n) {
                    step = b;
                }
            }
            match self.response_outcome(pos, step) {
                Step::Continue => {}
                other => return other,
            }
        }
        Step::Continue
    }

    /// Body data or trailers: through the response filters that have their
    /// headers, in response order, up to the one that holds; on from there
    /// when it lets go.
    fn response_deliver<S: Stage>(&mut self, st: &mut [S]) -> Step {
        if self.response.replied {
            return Step::Replied;
        }
        let n = self.response.order.len();
        let reached = self.response.reached;
        for pos in 0..reached {
            let Some(i) = self.response.order.get(pos).copied() else {
                break;
            };
            let Some(s) = st.get_mut(i) else { break };
            let step = self
                .response_body_step(s, false, pos + 1 == n)
                .unwrap_or(Step::Continue);
            match self.response_outcome(pos, step) {
                Step::Continue => {}
                other => return other,
            }
        }
        if reached < n {
            // The filter that held the headers let go: the ones after it
            // get the headers and what has arrived.
            return self.response_advance(st, reached);
        }
        Step::Continue
    }

    fn response_outcome(&mut self, pos: usize, step: Step) -> Step {
        let r = &mut self.response;
        match step {
            Step::Continue => {
                if r.held == Some(pos) {
                    r.held = None;
                }
                Step::Continue
            }
            Step::Hold => {
                r.held = Some(pos);
                Step::Hold
            }
            Step::Replied => {
                r.replied = true;
                r.held = None;
                Step::Replied
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// A scripted stage: answers from its script, logs every call.
    struct Fake {
        name: &'static str,
        reads_body: bool,
        on_headers: Step,
        /// Answer to body/trailers: Hold until end of stream, then this.
        at_end: Step,
        log: Rc<RefCell<Vec<String>>>,
        /// Response side: gets response callbacks, its answer to the
        /// headers, whether it holds the body until its end, and how many
        /// bytes it adds to each chunk (a re-encoder).
        responds: bool,
        on_response_headers: Step,
        hold_response_body: bool,
        adds: usize,
        last_size: usize,
        /// The request body it replaces with this many bytes at its end.
        replaces_with: Option<usize>,
        replaced: Option<usize>,
    }

    impl Stage for Fake {
        fn headers(&mut self, eos: bool) -> Step {
            self.log
                .borrow_mut()
                .push(format!("{}:headers({eos})", self.name));
            self.on_headers
        }
        fn body(&mut self, size: usize, eos: bool) -> Step {
            self.log
                .borrow_mut()
                .push(format!("{}:body({size},{eos})", self.name));
            if eos {
                self.replaced = self.replaces_with;
                self.at_end
            } else {
                Step::Hold
            }
        }
        fn trailers(&mut self) -> Step {
            self.log
                .borrow_mut()
                .push(format!("{}:trailers", self.name));
            self.replaced = self.replaces_with;
            self.at_end
        }
        fn reads_body(&self) -> bool {
            self.reads_body
        }
        fn on_response(&self) -> bool {
            self.responds
        }
        fn response_headers(&mut self, eos: bool) -> Step {
            self.log
                .borrow_mut()
                .push(format!("{}:response_headers({eos})", self.name));
            self.on_response_headers
        }
        fn response_body(&mut self, size: usize, eos: bool) -> Step {
            self.log
                .borrow_mut()
                .push(format!("{}:response_body({size},{eos})", self.name));
            self.last_size = size;
            if self.hold_response_body && !eos {
                Step::Hold
            } else {
                Step::Continue
            }
        }
        fn response_trailers(&mut self) -> Step {
            self.log
                .borrow_mut()
                .push(format!("{}:response_trailers", self.name));
            Step::Continue
        }
        fn body_size(&mut self, response: bool) -> Option<usize> {
            if response {
                (self.adds > 0).then(|| self.last_size + self.adds)
            } else {
                self.replaced.take()
            }
        }
    }

    struct Script {
        log: Rc<RefCell<Vec<String>>>,
        stages: Vec<Fake>,
    }

    impl Script {
        fn new() -> Self {
            Script {
                log: Rc::new(RefCell::new(Vec::new())),
                stages: Vec::new(),
            }
        }
        fn stage(mut self, name: &'static str, on_headers: Step) -> Self {
            self.stages.push(Fake {
                name,
                reads_body: false,
                on_headers,
                at_end: Step::Continue,
                log: self.log.clone(),
                responds: false,
                on_response_headers: Step::Continue,
                hold_response_body: false,
                adds: 0,
                last_size: 0,
                replaces_with: None,
                replaced: None,
            });
            self
        }
        fn body_stage(mut self, name: &'static str, on_headers: Step, at_end: Step) -> Self {
            self.stages.push(Fake {
                name,
                reads_body: true,
                on_headers,
                at_end,
                log: self.log.clone(),
                responds: false,
                on_response_headers: Step::Continue,
                hold_response_body: false,
                adds: 0,
                last_size: 0,
                replaces_with: None,
                replaced: None,
            });
            self
        }
        /// The last stage added also gets the response callbacks.
        fn responding(mut self, on_headers: Step, hold_body: bool, adds: usize) -> Self {
            if let Some(f) = self.stages.last_mut() {
                f.responds = true;
                f.on_response_headers = on_headers;
                f.hold_response_body = hold_body;
                f.adds = adds;
            }
            self
        }
        /// The last stage added replaces the request body at its end.
        fn replacing(mut self, with: usize) -> Self {
            if let Some(f) = self.stages.last_mut() {
                f.replaces_with = Some(with);
            }
            self
        }
        fn log(&self) -> Vec<String> {
            self.log.borrow_mut().drain(..).collect()
        }
    }

    use Step::{Continue, Hold, Replied};

    #[test]
    fn every_filter_runs_in_order_and_the_request_goes_on() {
        let mut s = Script::new().stage("a", Continue).stage("b", Continue);
        let mut r = Run::default();
        assert_eq!(r.headers(&mut s.stages, true), Continue);
        assert_eq!(s.log(), ["a:headers(true)", "b:headers(true)"]);
        assert!(r.passed());
        assert_eq!(r.ran().collect::<Vec<_>>(), [0, 1]);
    }

    #[test]
    fn a_denial_stops_the_chain() {
        let mut s = Script::new()
            .stage("a", Continue)
            .stage("b", Replied)
            .stage("c", Continue);
        let mut r = Run::default();
        assert_eq!(r.headers(&mut s.stages, true), Replied);
        assert_eq!(s.log(), ["a:headers(true)", "b:headers(true)"]);
        assert!(r.replied());
        assert_eq!(r.ran().collect::<Vec<_>>(), [0, 1]);
        assert_eq!(r.body(&mut s.stages, 3, true), Replied);
        assert!(s.log().is_empty());
    }

    #[test]
    fn a_body_reader_holds_everything_after_it_until_its_body_check() {
        let mut s = Script::new()
            .body_stage("sanitize", Hold, Continue)
            .body_stage("replay", Hold, Continue)
            .stage("fds", Continue);
        let mut r = Run::default();
        assert_eq!(r.headers(&mut s.stages, false), Hold);
        assert_eq!(s.log(), ["sanitize:headers(false)"]);
        assert_eq!(r.body(&mut s.stages, 10, false), Hold);
        assert_eq!(s.log(), ["sanitize:body(10,false)"]);
        assert_eq!(r.body(&mut s.stages, 25, true), Continue);
        assert_eq!(
            s.log(),
            [
                "sanitize:body(25,true)",
                "replay:headers(false)",
                "replay:body(25,true)",
                "fds:headers(false)"
            ]
        );
        assert!(r.passed());
    }

    #[test]
    fn a_body_denial_stops_the_filters_after_it() {
        let mut s = Script::new()
            .body_stage("sanitize", Hold, Replied)
            .stage("jwt", Continue);
        let mut r = Run::default();
        assert_eq!(r.headers(&mut s.stages, false), Hold);
        assert_eq!(r.body(&mut s.stages, 5, true), Replied);
        assert_eq!(
            s.log(),
            ["sanitize:headers(false)", "sanitize:body(5,true)"]
        );
    }

    #[test]
    fn trailers_complete_the_body() {
        let mut s = Script::new()
            .body_stage("sanitize", Hold, Continue)
            .body_stage("replay", Hold, Continue);
        let mut r = Run::default();
        r.headers(&mut s.stages, false);
        assert_eq!(r.body(&mut s.stages, 5, false), Hold);
        assert_eq!(r.trailers(&mut s.stages), Continue);
        assert_eq!(
            s.log(),
            [
                "sanitize:headers(false)",
                "sanitize:body(5,false)",
                "sanitize:trailers",
                "replay:headers(false)",
                "replay:body(5,false)",
                "replay:trailers"
            ]
        );
    }

    #[test]
    fn a_body_reader_held_until_the_trailers_gets_the_body_then_the_trailers() {
        // HTTP/2 with trailers: e2ee, held behind replay-guard's body check,
        // needs the body before the trailers, as Envoy would give it.
        let mut s = Script::new()
            .body_stage("replay", Hold, Continue)
            .body_stage("e2ee", Hold, Continue)
            .replacing(9)
            .body_stage("sanitize-body", Hold, Continue);
        let mut r = Run::default();
        r.headers(&mut s.stages, false);
        assert_eq!(r.body(&mut s.stages, 40, false), Hold);
        assert_eq!(r.trailers(&mut s.stages), Continue);
        assert_eq!(
            s.log(),
            [
                "replay:headers(false)",
                "replay:body(40,false)",
                "replay:trailers",
                "e2ee:headers(false)",
                "e2ee:body(40,false)",
                "e2ee:trailers",
                "sanitize-body:headers(false)",
                "sanitize-body:body(9,false)",
                "sanitize-body:trailers"
            ]
        );
    }

    #[test]
    fn a_callout_pauses_the_chain_and_resumes_at_the_next_filter() {
        let mut s = Script::new()
            .stage("jwt", Continue)
            .stage("passport", Hold)
            .stage("breaker", Continue);
        let mut r = Run::default();
        assert_eq!(r.headers(&mut s.stages, true), Hold);
        assert_eq!(r.held(), Some(1));
        assert_eq!(s.log(), ["jwt:headers(true)", "passport:headers(true)"]);
        // Another filter's resumption changes nothing.
        assert_eq!(r.resume(&mut s.stages, 0), Hold);
        assert_eq!(r.resume(&mut s.stages, 1), Continue);
        assert_eq!(s.log(), ["breaker:headers(true)"]);
        assert!(r.passed());
    }

    #[test]
    fn body_data_waits_with_a_filter_that_holds_for_a_callout() {
        let mut s = Script::new()
            .body_stage("sanitize", Continue, Continue)
            .stage("passport", Hold)
            .body_stage("late", Hold, Continue);
        let mut r = Run::default();
        assert_eq!(r.headers(&mut s.stages, false), Hold);
        assert_eq!(r.body(&mut s.stages, 7, false), Hold);
        assert_eq!(r.body(&mut s.stages, 9, true), Hold);
        assert_eq!(r.held(), Some(1));
        // The answer: the filters after it get the headers and the whole body.
        assert_eq!(r.resume(&mut s.stages, 1), Continue);
        assert_eq!(
            s.log(),
            [
                "sanitize:headers(false)",
                "passport:headers(false)",
                "sanitize:body(7,false)",
                "sanitize:body(9,true)",
                "late:headers(false)",
                "late:body(9,true)"
            ]
        );
    }

    #[test]
    fn a_callout_in_a_body_step_resumes_with_the_body_complete() {
        // replay-guard's nonce claim: its body step waits for the answer.
        let mut s = Script::new()
            .body_stage("replay", Hold, Hold)
            .stage("fds", Continue);
        let mut r = Run::default();
        assert_eq!(r.headers(&mut s.stages, false), Hold);
        assert_eq!(r.body(&mut s.stages, 4, true), Hold);
        assert_eq!(r.held(), Some(0));
        assert_eq!(r.resume(&mut s.stages, 0), Continue);
        assert_eq!(
            s.log(),
            [
                "replay:headers(false)",
                "replay:body(4,true)",
                "fds:headers(false)"
            ]
        );
    }

    #[test]
    fn a_callout_answered_with_a_denial_ends_the_request() {
        let mut s = Script::new()
            .stage("passport", Hold)
            .stage("breaker", Continue);
        let mut r = Run::default();
        r.headers(&mut s.stages, true);
        r.mark_replied();
        assert_eq!(r.resume(&mut s.stages, 0), Replied);
        assert_eq!(s.log(), ["passport:headers(true)"]);
    }

    #[test]
    fn filters_off_on_a_route_are_skipped_entirely() {
        let mut s = Script::new()
            .stage("sanitize", Continue)
            .stage("fds", Replied)
            .stage("breaker", Continue);
        let mut r = Run::new(vec![false, true, true]);
        assert_eq!(r.headers(&mut s.stages, true), Continue);
        assert_eq!(s.log(), ["sanitize:headers(true)"]);
        assert_eq!(r.ran().collect::<Vec<_>>(), [0]);
    }

    #[test]
    fn a_dry_run_body_reader_that_lets_the_headers_go_still_sees_the_body() {
        let mut s = Script::new()
            .body_stage("sanitize", Continue, Continue)
            .stage("jwt", Continue);
        let mut r = Run::default();
        assert_eq!(r.headers(&mut s.stages, false), Continue);
        assert_eq!(r.body(&mut s.stages, 3, true), Continue);
        assert_eq!(
            s.log(),
            [
                "sanitize:headers(false)",
                "jwt:headers(false)",
                "sanitize:body(3,true)"
            ]
        );
    }

    #[test]
    fn the_response_goes_to_the_response_filters_that_ran_last_one_first() {
        let mut s = Script::new()
            .stage("sanitize", Continue)
            .responding(Continue, false, 0)
            .stage("jwt", Continue)
            .stage("e2ee", Continue)
            .responding(Continue, false, 0)
            .stage("breaker", Continue);
        let mut r = Run::default();
        assert_eq!(r.headers(&mut s.stages, true), Continue);
        s.log();
        assert_eq!(r.response_headers(&mut s.stages, false), Continue);
        assert_eq!(r.response_body(&mut s.stages, 5, false), Continue);
        assert_eq!(r.response_body(&mut s.stages, 3, true), Continue);
        assert_eq!(
            s.log(),
            [
                "e2ee:response_headers(false)",
                "sanitize:response_headers(false)",
                "e2ee:response_body(5,false)",
                "sanitize:response_body(5,false)",
                "e2ee:response_body(3,true)",
                "sanitize:response_body(3,true)"
            ]
        );
    }

    #[test]
    fn a_filter_that_replaces_a_response_chunk_hands_its_new_size_on() {
        // e2ee (later in the chain, so first for the response) turns each
        // chunk into records, 4 bytes longer here; the filter before it in
        // the chain gets the records.
        let mut s = Script::new()
            .stage("outer", Continue)
            .responding(Continue, false, 0)
            .stage("e2ee", Continue)
            .responding(Continue, false, 4);
        let mut r = Run::default();
        r.headers(&mut s.stages, true);
        r.response_headers(&mut s.stages, false);
        s.log();
        assert_eq!(r.response_body(&mut s.stages, 10, false), Continue);
        assert_eq!(r.response_trailers(&mut s.stages), Continue);
        assert_eq!(
            s.log(),
            [
                "e2ee:response_body(10,false)",
                "outer:response_body(14,false)",
                "e2ee:response_trailers",
                "outer:response_trailers"
            ]
        );
    }

    #[test]
    fn response_headers_end_of_stream_and_filters_without_response_callbacks() {
        let mut s = Script::new()
            .stage("jwt", Continue)
            .stage("e2ee", Continue)
            .responding(Continue, false, 0);
        let mut r = Run::default();
        r.headers(&mut s.stages, true);
        s.log();
        assert_eq!(r.response_headers(&mut s.stages, true), Continue);
        assert_eq!(s.log(), ["e2ee:response_headers(true)"]);

        // No filter with response callbacks: nothing is called.
        let mut s = Script::new()
            .stage("jwt", Continue)
            .stage("breaker", Continue);
        let mut r = Run::default();
        r.headers(&mut s.stages, true);
        s.log();
        assert_eq!(r.response_headers(&mut s.stages, false), Continue);
        assert_eq!(r.response_body(&mut s.stages, 7, true), Continue);
        assert!(s.log().is_empty());
    }

    #[test]
    fn after_a_denial_only_the_filters_that_ran_see_the_response() {
        let mut s = Script::new()
            .stage("sanitize", Continue)
            .responding(Continue, false, 0)
            .stage("replay", Replied)
            .stage("e2ee", Continue)
            .responding(Continue, false, 0);
        let mut r = Run::default();
        assert_eq!(r.headers(&mut s.stages, true), Replied);
        s.log();
        // The local reply's response: e2ee never ran, so it is not asked.
        assert_eq!(r.response_headers(&mut s.stages, false), Continue);
        assert_eq!(r.response_body(&mut s.stages, 40, true), Continue);
        assert_eq!(
            s.log(),
            [
                "sanitize:response_headers(false)",
                "sanitize:response_body(40,true)"
            ]
        );
    }

    #[test]
    fn a_response_filter_that_holds_stops_the_ones_after_it_until_it_lets_go() {
        // The last filter of the chain holds the response headers and body
        // until the body's end; the filter before it gets nothing until
        // then, and then the headers and the whole (buffered) body.
        let mut s = Script::new()
            .stage("outer", Continue)
            .responding(Continue, false, 0)
            .stage("inner", Continue)
            .responding(Hold, true, 0);
        let mut r = Run::default();
        r.headers(&mut s.stages, true);
        s.log();
        assert_eq!(r.response_headers(&mut s.stages, false), Hold);
        assert_eq!(r.response_held(), Some(1));
        assert_eq!(r.response_body(&mut s.stages, 4, false), Hold);
        assert_eq!(r.response_body(&mut s.stages, 9, true), Continue);
        assert_eq!(r.response_held(), None);
        assert_eq!(
            s.log(),
            [
                "inner:response_headers(false)",
                "inner:response_body(4,false)",
                "inner:response_body(9,true)",
                "outer:response_headers(false)",
                "outer:response_body(9,true)"
            ]
        );
    }

    #[test]
    fn a_filter_that_replaces_the_request_body_hands_its_size_to_the_ones_after_it() {
        // e2ee decrypts 60 bytes into 23; sanitize-body judges 23.
        let mut s = Script::new()
            .body_stage("e2ee", Hold, Continue)
            .replacing(23)
            .body_stage("sanitize-body", Hold, Continue);
        let mut r = Run::default();
        assert_eq!(r.headers(&mut s.stages, false), Hold);
        assert_eq!(r.body(&mut s.stages, 60, true), Continue);
        assert_eq!(
            s.log(),
            [
                "e2ee:headers(false)",
                "e2ee:body(60,true)",
                "sanitize-body:headers(false)",
                "sanitize-body:body(23,true)"
            ]
        );
    }

    #[test]
    fn a_response_held_until_its_trailers_reaches_the_next_filter_body_first() {
        let mut s = Script::new()
            .stage("outer", Continue)
            .responding(Continue, false, 0)
            .stage("inner", Continue)
            .responding(Hold, true, 0);
        let mut r = Run::default();
        r.headers(&mut s.stages, true);
        s.log();
        assert_eq!(r.response_headers(&mut s.stages, false), Hold);
        assert_eq!(r.response_body(&mut s.stages, 6, false), Hold);
        assert_eq!(r.response_trailers(&mut s.stages), Continue);
        assert_eq!(
            s.log(),
            [
                "inner:response_headers(false)",
                "inner:response_body(6,false)",
                "inner:response_trailers",
                "outer:response_headers(false)",
                "outer:response_body(6,false)",
                "outer:response_trailers"
            ]
        );
    }
}
