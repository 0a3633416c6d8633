//! The chain build's hooks (filters/chain), re-exported as
//! `filter_core::proxy::chain`: which request context serves
//! `proxy::ProxyHost`, which filter is being called, what the filters asked
//! of their root context (tick periods, resumptions), and the configuration
//! a filter's `on_configure` loads.
//!
//! **The switch is scoped.** The chain turns its redirections on only while
//! it is calling into its filters: every chain callback holds a [`Scope`]
//! from its entry to its exit, and dropping it restores what was there
//! before (also when a filter panics and the stack unwinds: the native
//! module catches panics, and the thread goes on serving other filters).
//! Outside a scope [`enabled`] is false and every `filter_core::proxy`
//! wrapper is the plain host call. That matters natively, where one worker
//! thread runs the filters that are their own Envoy filters, every
//! gateway's chain and (on the main thread) their root contexts: none of
//! them may see another one's switch, selected request or configuration.
//! In wasm (one chain per VM) a scope per callback is what the chain had
//! before: the switch was on for the whole VM, and every callback selects
//! its request first.
//!
//! Plain Rust (no proxy-wasm call), so it is tested natively.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use crate::context::RequestContext;

/// A request's context, shared by the chain and `proxy::ProxyHost`.
pub type Shared = Rc<RefCell<RequestContext>>;

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(false) };
    static STAGE: Cell<usize> = const { Cell::new(0) };
    static EFFECTIVE: Cell<u32> = const { Cell::new(0) };
    static ACTIVE: RefCell<Option<Shared>> = const { RefCell::new(None) };
    /// The chain's requests in flight, by context id (ids are unique on a
    /// thread, natively unique in the process: several chains share it).
    static REQUESTS: RefCell<HashMap<u32, Shared>> = RefCell::new(HashMap::new());
    static TICKS: RefCell<Vec<(usize, Duration)>> = const { RefCell::new(Vec::new()) };
    static RESUMED: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    static CONFIG: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// The chain's redirections, on for as long as this guard lives (one per
/// chain callback: [`enter`]). Dropping it puts back the switch, the
/// filter index, the effective context and the selected request context as
/// they were when it was made, so a scope inside another one (a chain
/// callback that Envoy runs from inside another chain's) leaves the outer
/// one as it found it.
#[must_use = "the redirections are on only while the scope lives"]
#[derive(Debug)]
pub struct Scope {
    enabled: bool,
    stage: usize,
    effective: u32,
    active: Option<Shared>,
}

/// Turns the chain's redirections on until the returned [`Scope`] drops.
pub fn enter() -> Scope {
    Scope {
        enabled: ENABLED.with(|e| e.replace(true)),
        stage: STAGE.with(Cell::get),
        effective: EFFECTIVE.with(Cell::get),
        active: ACTIVE.with(|a| a.try_borrow().ok().and_then(|a| a.clone())),
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        ENABLED.with(|e| e.set(self.enabled));
        STAGE.with(|s| s.set(self.stage));
        EFFECTIVE.with(|e| e.set(self.effective));
        let prev = self.active.take();
        ACTIVE.with(|a| {
            if let Ok(mut a) = a.try_borrow_mut() {
                *a = prev;
            }
        });
    }
}

/// The redirections are on: a chain callback is running on this thread.
pub fn enabled() -> bool {
    ENABLED.with(Cell::get)
}

/// The filter (index in the chain) being called.
pub fn set_stage(i: usize) {
    STAGE.with(|s| s.set(i));
}

pub fn stage() -> usize {
    STAGE.with(Cell::get)
}

/// Registers a request of the chain (its context id and context).
pub fn register(id: u32, ctx: Shared) {
    REQUESTS.with(|r| r.borrow_mut().insert(id, ctx));
}

/// Forgets a finished request.
pub fn unregister(id: u32) {
    REQUESTS.with(|r| r.borrow_mut().remove(&id));
    if EFFECTIVE.with(Cell::get) == id {
        ACTIVE.with(|a| {
            if let Ok(mut a) = a.try_borrow_mut() {
                a.take();
            }
        });
    }
}

/// Context `id` is now the effective one: its request context (if it is a
/// request of the chain) serves `proxy::ProxyHost`.
pub fn select(id: u32) {
    EFFECTIVE.with(|e| e.set(id));
    let ctx = REQUESTS.with(|r| r.borrow().get(&id).cloned());
    if let Some(c) = &ctx {
        if let Ok(mut c) = c.try_borrow_mut() {
            c.begin_callback();
        }
    }
    ACTIVE.with(|a| *a.borrow_mut() = ctx);
}

/// No request context serves `proxy::ProxyHost` (root callbacks).
pub fn deselect(root_id: u32) {
    EFFECTIVE.with(|e| e.set(root_id));
    ACTIVE.with(|a| a.borrow_mut().take());
}

/// The request context that serves `proxy::ProxyHost` now: only inside a
/// [`Scope`].
pub fn active() -> Option<Shared> {
    if !enabled() {
        return None;
    }
    ACTIVE.with(|a| a.borrow().clone())
}

pub fn effective() -> u32 {
    EFFECTIVE.with(Cell::get)
}

/// A filter asked for a tick period (`proxy::set_tick_period` inside a
/// scope): the chain ticks it on its own.
pub fn push_tick(period: Duration) {
    let stage = stage();
    TICKS.with(|t| t.borrow_mut().push((stage, period)));
}

/// A filter resumed the effective request (`proxy::resume_http_request`
/// inside a scope): the chain resumes it after the filters after it ran.
pub fn push_resumed() {
    let id = effective();
    RESUMED.with(|r| r.borrow_mut().push(id));
}

/// The tick periods the filters asked for since the last call: (filter
/// index, period).
pub fn take_ticks() -> Vec<(usize, Duration)> {
    TICKS.with(|t| std::mem::take(&mut *t.borrow_mut()))
}

/// The requests a filter resumed since the last call (context ids).
pub fn take_resumed() -> Vec<u32> {
    RESUMED.with(|r| std::mem::take(&mut *r.borrow_mut()))
}

/// Puts back the plugin configuration that was there before
/// [`with_config`] (also on unwind).
struct ConfigGuard(Option<Vec<u8>>);

impl Drop for ConfigGuard {
    fn drop(&mut self) {
        let prev = self.0.take();
        CONFIG.with(|c| {
            if let Ok(mut c) = c.try_borrow_mut() {
                *c = prev;
            }
        });
    }
}

/// Runs `f` (a filter's `on_configure`) with `config` as the plugin
/// configuration that `proxy::load_plugin_config` reads; the one before is
/// back when `f` returns or unwinds (natively, a filter that runs as its
/// own Envoy filter on this thread reads its own block's configuration).
pub fn with_config<R>(config: Vec<u8>, f: impl FnOnce() -> R) -> R {
    let _guard = ConfigGuard(CONFIG.with(|c| c.borrow_mut().replace(config)));
    f()
}

/// The configuration [`with_config`] installed, if a chain is configuring
/// a filter now.
pub fn config() -> Option<Vec<u8>> {
    CONFIG.with(|c| c.borrow().clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::{HeaderWrites, RequestContext};

    fn ctx() -> Shared {
        Rc::new(RefCell::new(RequestContext::new(
            HeaderWrites::Each,
            Vec::new(),
        )))
    }

    #[test]
    fn outside_a_scope_nothing_is_redirected() {
        register(7, ctx());
        select(7);
        assert!(!enabled());
        assert!(active().is_none(), "no request context without a scope");
        unregister(7);
    }

    #[test]
    fn a_scope_turns_the_switch_on_and_its_drop_turns_it_off() {
        register(11, ctx());
        {
            let _s = enter();
            assert!(enabled());
            select(11);
            set_stage(3);
            assert!(active().is_some());
            assert_eq!((effective(), stage()), (11, 3));
        }
        assert!(!enabled());
        assert!(active().is_none());
        assert_eq!(
            (effective(), stage()),
            (0, 0),
            "the state before the scope is back"
        );
        unregister(11);
    }

    #[test]
    fn a_nested_scope_leaves_the_outer_one_as_it_found_it() {
        let (a, b) = (ctx(), ctx());
        register(21, a.clone());
        register(22, b.clone());
        let outer = enter();
        select(21);
        set_stage(1);
        {
            let _inner = enter();
            select(22);
            set_stage(4);
            assert!(Rc::ptr_eq(&active().unwrap(), &b));
        }
        assert!(enabled());
        assert_eq!((effective(), stage()), (21, 1));
        assert!(
            Rc::ptr_eq(&active().unwrap(), &a),
            "the outer request is selected again"
        );
        drop(outer);
        assert!(!enabled());
        unregister(21);
        unregister(22);
    }

    #[test]
    fn a_panic_inside_a_scope_still_turns_the_switch_off() {
        register(31, ctx());
        let r = std::panic::catch_unwind(|| {
            let _s = enter();
            select(31);
            panic!("a filter failed");
        });
        assert!(r.is_err());
        assert!(!enabled());
        assert!(active().is_none());
        unregister(31);
    }

    #[test]
    fn the_chain_s_configuration_is_seen_inside_with_config_only_also_after_a_panic() {
        assert_eq!(config(), None);
        let seen = with_config(b"{\"a\":1}".to_vec(), config);
        assert_eq!(seen.as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(config(), None);
        let r = std::panic::catch_unwind(|| with_config(b"{}".to_vec(), || panic!("refused")));
        assert!(r.is_err());
        assert_eq!(
            config(),
            None,
            "a part's configuration never leaks to the next filter"
        );
        let nested = with_config(b"outer".to_vec(), || {
            with_config(b"inner".to_vec(), || ());
            config()
        });
        assert_eq!(nested.as_deref(), Some(&b"outer"[..]));
    }

    #[test]
    fn ticks_and_resumptions_name_the_stage_and_the_effective_context() {
        let _s = enter();
        set_stage(2);
        push_tick(Duration::from_secs(1));
        EFFECTIVE.with(|e| e.set(41));
        push_resumed();
        assert_eq!(take_ticks(), vec![(2, Duration::from_secs(1))]);
        assert_eq!(take_resumed(), vec![41]);
        assert!(take_ticks().is_empty() && take_resumed().is_empty());
    }
}
