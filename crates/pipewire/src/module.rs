//! The module entry point, the module's core and its life cycle.

use crate::args::Args;
use crate::dict::with_dict;
use crate::pw_sys as pw;
use crate::spa_sys as spa;
use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;

/// What PipeWire shows about a module (`pw-cli info <module>`).
pub struct ModuleInfo {
    pub author: &'static str,
    pub description: &'static str,
    /// Every argument, one per line.
    pub usage: &'static str,
}

/// A loadable module: created at load with its arguments, dropped at unload (or when the
/// daemon shuts down). Everything runs on the daemon's main thread.
pub trait PwModule: Sized + 'static {
    fn init(ctx: &Context, args: &Args) -> Result<Self, String>;
}

pub(crate) struct CtxInner {
    pub(crate) context: *mut pw::pw_context,
    pub(crate) main_loop: *mut pw::pw_loop,
    pub(crate) core: Cell<*mut pw::pw_core>,
}

/// The module's handle on the daemon: its main loop and the core it connected (main thread
/// only; cheap to clone).
#[derive(Clone)]
pub struct Context {
    pub(crate) inner: Rc<CtxInner>,
}

/// A node of the daemon's graph, as [`Context::nodes`] lists it.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub id: u32,
    pub name: String,
    pub media_class: String,
}

struct NodeScan(Vec<NodeInfo>);

unsafe fn prop(props: *const pw::pw_properties, key: &CStr) -> String {
    let v = pw::pw_properties_get(props, key.as_ptr());
    if v.is_null() {
        String::new()
    } else {
        CStr::from_ptr(v).to_string_lossy().into_owned()
    }
}

unsafe extern "C" fn scan_global(data: *mut c_void, global: *mut pw::pw_global) -> c_int {
    let r = catch_unwind(AssertUnwindSafe(|| {
        let scan = &mut *(data as *mut NodeScan);
        let ty = pw::pw_global_get_type(global);
        if ty.is_null() || CStr::from_ptr(ty).to_bytes() != b"PipeWire:Interface:Node" {
            return;
        }
        let props = pw::pw_global_get_properties(global);
        if props.is_null() {
            return;
        }
        scan.0.push(NodeInfo {
            id: pw::pw_global_get_id(global),
            name: prop(props, c"node.name"),
            media_class: prop(props, c"media.class"),
        });
    }));
    if r.is_err() {
        log_error("panic while listing nodes (caught)");
    }
    0
}

impl Context {
    /// False once the daemon has taken the module's core away (shutdown in progress).
    pub fn connected(&self) -> bool {
        !self.inner.core.get().is_null()
    }

    /// Every node of the daemon's graph now (main thread; the module runs inside the daemon,
    /// so this is a walk over the context's globals, no round trip).
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let mut scan = NodeScan(Vec::new());
        // SAFETY: the context lives as long as the module; the callback only reads each
        // global's type and properties during the call; `scan` outlives it.
        unsafe {
            pw::pw_context_for_each_global(
                self.inner.context,
                Some(scan_global),
                &mut scan as *mut NodeScan as *mut c_void,
            );
        }
        scan.0
    }
}

/// Everything of one loaded module, on the heap at a fixed address (the hooks point into it).
struct Instance<M> {
    module: *mut pw::pw_impl_module,
    ctx: Context,
    module_hook: spa::spa_hook,
    module_events: pw::pw_impl_module_events,
    core_hook: spa::spa_hook,
    core_events: pw::pw_proxy_events,
    state: Option<M>,
}

/// `spa_hook_remove` (an inline function in the headers).
pub(crate) unsafe fn hook_remove(hook: *mut spa::spa_hook) {
    let link = &mut (*hook).link;
    if !link.next.is_null() && !link.prev.is_null() {
        (*link.prev).next = link.next;
        (*link.next).prev = link.prev;
        link.next = std::ptr::null_mut();
        link.prev = std::ptr::null_mut();
    }
    if let Some(removed) = (*hook).removed {
        removed(hook);
    }
}

fn log_error(msg: &str) {
    log::error!("{msg}");
}

unsafe extern "C" fn on_core_destroy<M: PwModule>(data: *mut c_void) {
    let inst = &mut *(data as *mut Instance<M>);
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // The daemon disconnects every core before it destroys the modules: forget ours (it
        // is being freed) and have the module destroyed.
        hook_remove(&mut inst.core_hook);
        inst.ctx.inner.core.set(std::ptr::null_mut());
        pw::pw_impl_module_schedule_destroy(inst.module);
    }));
}

unsafe extern "C" fn on_module_destroy<M: PwModule>(data: *mut c_void) {
    let inst = data as *mut Instance<M>;
    let r = catch_unwind(AssertUnwindSafe(|| {
        let i = &mut *inst;
        hook_remove(&mut i.module_hook);
        // Streams, timers, threads of the module go first, then its core.
        drop(i.state.take());
        let core = i.ctx.inner.core.get();
        if !core.is_null() {
            hook_remove(&mut i.core_hook);
            i.ctx.inner.core.set(std::ptr::null_mut());
            pw::pw_core_disconnect(core);
        }
        drop(Box::from_raw(inst));
    }));
    if r.is_err() {
        log_error("panic while unloading the module (caught)");
    }
}

fn set_module_props(module: *mut pw::pw_impl_module, info: &ModuleInfo) {
    let pairs = [
        ("module.author", info.author),
        ("module.description", info.description),
        ("module.usage", info.usage),
        ("module.version", env!("CARGO_PKG_VERSION")),
    ];
    // SAFETY: module is the live module being initialised; the dict and its strings outlive
    // the call (PipeWire copies them).
    with_dict(pairs, |dict| unsafe {
        pw::pw_impl_module_update_properties(module, dict as *const _);
    });
}

/// The body of `pipewire__module_init` (see [`crate::declare_pw_module`]): parses the
/// arguments, connects a core, creates the module state, and arranges its clean-up. Returns 0,
/// or a negative errno with the reason in the daemon's log. Never lets a panic out.
#[allow(clippy::not_unsafe_ptr_arg_deref)] // called only by the generated entry point, with PipeWire's pointers
pub fn module_init<M: PwModule>(
    module: *mut c_void,
    args: *const c_char,
    info: &ModuleInfo,
) -> c_int {
    crate::init_logging("opus-tunnel");
    let module = module as *mut pw::pw_impl_module;
    if module.is_null() {
        return -libc_einval();
    }
    let r = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
        let text = if args.is_null() {
            String::new()
        } else {
            // SAFETY: PipeWire passes a NUL-terminated argument string (or NULL).
            unsafe { CStr::from_ptr(args) }
                .to_string_lossy()
                .into_owned()
        };
        let parsed = Args::parse(&text)?;
        set_module_props(module, info);
        // SAFETY: module is live; its context and main loop live at least as long as it.
        let (context, main_loop) = unsafe {
            let context = pw::pw_impl_module_get_context(module);
            (context, pw::pw_context_get_main_loop(context))
        };
        if context.is_null() || main_loop.is_null() {
            return Err("the module has no context".into());
        }
        // SAFETY: context is live; a NULL properties pointer is allowed.
        let core = unsafe { pw::pw_context_connect(context, std::ptr::null_mut(), 0) };
        if core.is_null() {
            return Err(format!(
                "cannot connect to the daemon's core: {}",
                std::io::Error::last_os_error()
            ));
        }
        let ctx = Context {
            inner: Rc::new(CtxInner {
                context,
                main_loop,
                core: Cell::new(core),
            }),
        };
        let state = match M::init(&ctx, &parsed) {
            Ok(s) => s,
            Err(e) => {
                // SAFETY: the core is ours and nothing else uses it.
                unsafe { pw::pw_core_disconnect(core) };
                return Err(e);
            }
        };
        // SAFETY: zeroed hooks and events are the documented initial state; the instance is
        // boxed so the addresses handed to PipeWire stay valid until `on_module_destroy`
        // frees it, after removing both hooks.
        unsafe {
            let inst: *mut Instance<M> = Box::into_raw(Box::new(Instance {
                module,
                ctx,
                module_hook: std::mem::zeroed(),
                module_events: pw::pw_impl_module_events {
                    version: pw::PW_VERSION_IMPL_MODULE_EVENTS,
                    destroy: Some(on_module_destroy::<M>),
                    free: None,
                    initialized: None,
                    registered: None,
                },
                core_hook: std::mem::zeroed(),
                core_events: pw::pw_proxy_events {
                    version: pw::PW_VERSION_PROXY_EVENTS,
                    destroy: Some(on_core_destroy::<M>),
                    ..std::mem::zeroed()
                },
                state: Some(state),
            }));
            pw::pw_proxy_add_listener(
                core as *mut pw::pw_proxy,
                &mut (*inst).core_hook as *mut spa::spa_hook as *mut _,
                &(*inst).core_events,
                inst as *mut c_void,
            );
            pw::pw_impl_module_add_listener(
                module,
                &mut (*inst).module_hook as *mut spa::spa_hook as *mut _,
                &(*inst).module_events,
                inst as *mut c_void,
            );
        }
        Ok(())
    }));
    match r {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            log_error(&format!("cannot load: {e}"));
            -libc_einval()
        }
        Err(_) => {
            log_error("cannot load: panic during initialisation (caught)");
            -libc_einval()
        }
    }
}

fn libc_einval() -> c_int {
    22
}
