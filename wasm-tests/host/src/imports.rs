//! The host functions: proxy-wasm ABI v0.2.1 (module `env`) and the WASI subset the spec
//! lists (`wasi_snapshot_preview1`), with the status codes Envoy returns.

use std::time::Duration;

use wasmtime::{Caller, Extern, Linker, Module, Val, ValType};

use super::abi::{self, buffer, map, Headers, LogLevel, MetricType, Status};
use super::{HttpCall, LocalResponse, LogEntry, State, StreamData};

type C<'a> = Caller<'a, State>;
type R = wasmtime::Result<i32>;

/// Every function defined by [`define`], so that [`stub_unknown`] can tell what is missing.
const DEFINED: &[(&str, &str)] = &[
    ("env", "proxy_log"),
    ("env", "proxy_get_log_level"),
    ("env", "proxy_get_current_time_nanoseconds"),
    ("env", "proxy_set_tick_period_milliseconds"),
    ("env", "proxy_get_buffer_bytes"),
    ("env", "proxy_set_buffer_bytes"),
    ("env", "proxy_get_buffer_status"),
    ("env", "proxy_get_header_map_pairs"),
    ("env", "proxy_set_header_map_pairs"),
    ("env", "proxy_get_header_map_size"),
    ("env", "proxy_get_header_map_value"),
    ("env", "proxy_replace_header_map_value"),
    ("env", "proxy_add_header_map_value"),
    ("env", "proxy_remove_header_map_value"),
    ("env", "proxy_get_property"),
    ("env", "proxy_set_property"),
    ("env", "proxy_get_shared_data"),
    ("env", "proxy_set_shared_data"),
    ("env", "proxy_register_shared_queue"),
    ("env", "proxy_resolve_shared_queue"),
    ("env", "proxy_enqueue_shared_queue"),
    ("env", "proxy_dequeue_shared_queue"),
    ("env", "proxy_continue_stream"),
    ("env", "proxy_close_stream"),
    ("env", "proxy_send_local_response"),
    ("env", "proxy_http_call"),
    ("env", "proxy_set_effective_context"),
    ("env", "proxy_done"),
    ("env", "proxy_define_metric"),
    ("env", "proxy_increment_metric"),
    ("env", "proxy_record_metric"),
    ("env", "proxy_get_metric"),
    ("wasi_snapshot_preview1", "fd_write"),
    ("wasi_snapshot_preview1", "fd_read"),
    ("wasi_snapshot_preview1", "fd_close"),
    ("wasi_snapshot_preview1", "fd_seek"),
    ("wasi_snapshot_preview1", "fd_fdstat_get"),
    ("wasi_snapshot_preview1", "fd_prestat_get"),
    ("wasi_snapshot_preview1", "fd_prestat_dir_name"),
    ("wasi_snapshot_preview1", "args_get"),
    ("wasi_snapshot_preview1", "args_sizes_get"),
    ("wasi_snapshot_preview1", "environ_get"),
    ("wasi_snapshot_preview1", "environ_sizes_get"),
    ("wasi_snapshot_preview1", "clock_time_get"),
    ("wasi_snapshot_preview1", "clock_res_get"),
    ("wasi_snapshot_preview1", "random_get"),
    ("wasi_snapshot_preview1", "proc_exit"),
    ("wasi_snapshot_preview1", "sched_yield"),
    ("wasi_snapshot_preview1", "poll_oneoff"),
];

// WASI errno values.
const WASI_SUCCESS: i32 = 0;
const WASI_BADF: i32 = 8;
const WASI_FAULT: i32 = 21;
const WASI_INVAL: i32 = 28;
const WASI_NOTSUP: i32 = 58;

fn code(r: Result<(), Status>) -> i32 {
    match r {
        Ok(()) => Status::Ok as i32,
        Err(s) => s as i32,
    }
}

// === memory ===

fn memory(c: &mut C<'_>) -> Result<wasmtime::Memory, Status> {
    match c.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => Err(Status::InvalidMemoryAccess),
    }
}

fn read(c: &mut C<'_>, ptr: i32, len: i32) -> Result<Vec<u8>, Status> {
    let mem = memory(c)?;
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    mem.data(&*c)
        .get(ptr..ptr.checked_add(len).ok_or(Status::InvalidMemoryAccess)?)
        .map(<[u8]>::to_vec)
        .ok_or(Status::InvalidMemoryAccess)
}

fn read_string(c: &mut C<'_>, ptr: i32, len: i32) -> Result<String, Status> {
    String::from_utf8(read(c, ptr, len)?).map_err(|_| Status::BadArgument)
}

fn write(c: &mut C<'_>, ptr: i32, bytes: &[u8]) -> Result<(), Status> {
    let mem = memory(c)?;
    mem.write(&mut *c, ptr as u32 as usize, bytes)
        .map_err(|_| Status::InvalidMemoryAccess)
}

fn write_u32(c: &mut C<'_>, ptr: i32, v: u32) -> Result<(), Status> {
    write(c, ptr, &v.to_le_bytes())
}

fn write_u64(c: &mut C<'_>, ptr: i32, v: u64) -> Result<(), Status> {
    write(c, ptr, &v.to_le_bytes())
}

/// Copies `bytes` into memory the module allocates (as Envoy does: `proxy_on_memory_allocate`
/// or `malloc`), and writes the pointer and size to the return slots. Empty data is
/// returned as a null pointer with size 0, as Envoy does.
fn give(
    c: &mut C<'_>,
    bytes: &[u8],
    ret_ptr: i32,
    ret_size: i32,
) -> wasmtime::Result<Result<(), Status>> {
    let mut ptr = 0u32;
    if !bytes.is_empty() {
        let alloc = c
            .get_export("proxy_on_memory_allocate")
            .or_else(|| c.get_export("malloc"))
            .and_then(Extern::into_func);
        let Some(alloc) = alloc else {
            return Ok(Err(Status::InvalidMemoryAccess));
        };
        let alloc = alloc.typed::<i32, i32>(&*c)?;
        ptr = alloc.call(&mut *c, bytes.len() as i32)? as u32;
        if ptr == 0 {
            return Ok(Err(Status::InvalidMemoryAccess));
        }
        if let Err(s) = write(c, ptr as i32, bytes) {
            return Ok(Err(s));
        }
    }
    Ok(write_u32(c, ret_ptr, ptr).and_then(|()| write_u32(c, ret_size, bytes.len() as u32)))
}

// === state lookups ===

fn stream(s: &mut State) -> Result<&mut StreamData, Status> {
    let id = s.effective;
    s.streams.get_mut(&id).ok_or(Status::NotFound)
}

fn header_map(s: &mut State, map_type: i32) -> Result<&mut Headers, Status> {
    match map_type {
        map::REQUEST_HEADERS => Ok(&mut stream(s)?.request_headers),
        map::REQUEST_TRAILERS => Ok(&mut stream(s)?.request_trailers),
        map::RESPONSE_HEADERS => Ok(&mut stream(s)?.response_headers),
        map::RESPONSE_TRAILERS => Ok(&mut stream(s)?.response_trailers),
        map::HTTP_CALL_RESPONSE_HEADERS => s
            .call_response
            .as_mut()
            .map(|r| &mut r.headers)
            .ok_or(Status::NotFound),
        map::HTTP_CALL_RESPONSE_TRAILERS => s
            .call_response
            .as_mut()
            .map(|r| &mut r.trailers)
            .ok_or(Status::NotFound),
        4 | 5 => Err(Status::NotFound),
        _ => Err(Status::BadArgument),
    }
}

fn buffer_bytes(s: &mut State, buffer_type: i32) -> Result<&mut Vec<u8>, Status> {
    match buffer_type {
        buffer::REQUEST_BODY => Ok(&mut stream(s)?.request_body),
        buffer::RESPONSE_BODY => Ok(&mut stream(s)?.response_body),
        buffer::HTTP_CALL_RESPONSE_BODY => s
            .call_response
            .as_mut()
            .map(|r| &mut r.body)
            .ok_or(Status::NotFound),
        buffer::VM_CONFIGURATION => Ok(&mut s.vm_config),
        buffer::PLUGIN_CONFIGURATION => Ok(&mut s.plugin_config),
        2 | 3 | 5 | 8 => Err(Status::NotFound),
        _ => Err(Status::BadArgument),
    }
}

fn property_path(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}

fn lowercase(pairs: Headers) -> Headers {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

fn next_random(s: &mut State) -> u64 {
    // xorshift64*: deterministic per VM, so tests repeat exactly.
    let mut x = s.random;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    s.random = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

// === the imports ===

/// Adds every host function to `linker`.
pub(crate) fn define(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    // --- logging, time, timers ---
    linker.func_wrap(
        "env",
        "proxy_log",
        |mut c: C<'_>, level: i32, ptr: i32, len: i32| -> R {
            let Some(level) = LogLevel::from_i32(level) else {
                return Ok(Status::BadArgument as i32);
            };
            let message = match read(&mut c, ptr, len) {
                Ok(m) => String::from_utf8_lossy(&m).into_owned(),
                Err(s) => return Ok(s as i32),
            };
            let context_id = c.data().effective;
            c.data_mut().logs.push(LogEntry {
                level,
                message,
                context_id,
            });
            Ok(0)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut c: C<'_>, ret: i32| -> R {
            let level = c.data().log_level as u32;
            Ok(code(write_u32(&mut c, ret, level)))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: C<'_>, ret: i32| -> R {
            let now = c.data().host.now_nanos();
            Ok(code(write_u64(&mut c, ret, now)))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, ms: i32| -> R {
            let now = c.data().host.now_nanos();
            let s = c.data_mut();
            s.tick_period = (ms != 0).then(|| Duration::from_millis(ms as u32 as u64));
            s.last_tick = now;
            Ok(0)
        },
    )?;

    // --- buffers ---
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: C<'_>, kind: i32, start: i32, max: i32, ret_ptr: i32, ret_size: i32| -> R {
            let bytes = match buffer_bytes(c.data_mut(), kind) {
                Ok(b) => b.clone(),
                Err(s) => return Ok(s as i32),
            };
            let (start, max) = (start as u32 as usize, max as u32 as usize);
            if start > bytes.len() {
                return Ok(Status::BadArgument as i32);
            }
            let end = start.saturating_add(max).min(bytes.len());
            Ok(code(give(&mut c, &bytes[start..end], ret_ptr, ret_size)?))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: C<'_>, kind: i32, start: i32, size: i32, ptr: i32, len: i32| -> R {
            if !matches!(kind, buffer::REQUEST_BODY | buffer::RESPONSE_BODY) {
                return Ok(Status::BadArgument as i32);
            }
            let value = match read(&mut c, ptr, len) {
                Ok(v) => v,
                Err(s) => return Ok(s as i32),
            };
            let body = match buffer_bytes(c.data_mut(), kind) {
                Ok(b) => b,
                Err(s) => return Ok(s as i32),
            };
            let start = (start as u32 as usize).min(body.len());
            let end = start.saturating_add(size as u32 as usize).min(body.len());
            body.splice(start..end, value);
            Ok(0)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut c: C<'_>, kind: i32, ret_size: i32, ret_flags: i32| -> R {
            let len = match buffer_bytes(c.data_mut(), kind) {
                Ok(b) => b.len() as u32,
                Err(s) => return Ok(s as i32),
            };
            Ok(code(
                write_u32(&mut c, ret_size, len).and_then(|()| write_u32(&mut c, ret_flags, 0)),
            ))
        },
    )?;

    // --- header maps ---
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: C<'_>, kind: i32, ret_ptr: i32, ret_size: i32| -> R {
            let bytes = match header_map(c.data_mut(), kind) {
                Ok(m) => abi::serialize_pairs(m),
                Err(s) => return Ok(s as i32),
            };
            Ok(code(give(&mut c, &bytes, ret_ptr, ret_size)?))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: C<'_>, kind: i32, ptr: i32, len: i32| -> R {
            let pairs = match read(&mut c, ptr, len).map(|b| abi::deserialize_pairs(&b)) {
                Ok(Some(p)) => lowercase(p),
                Ok(None) => return Ok(Status::BadArgument as i32),
                Err(s) => return Ok(s as i32),
            };
            Ok(code(header_map(c.data_mut(), kind).map(|m| *m = pairs)))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut c: C<'_>, kind: i32, ret_size: i32| -> R {
            let size = match header_map(c.data_mut(), kind) {
                Ok(m) => abi::serialize_pairs(m).len() as u32,
                Err(s) => return Ok(s as i32),
            };
            Ok(code(write_u32(&mut c, ret_size, size)))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: C<'_>, kind: i32, kp: i32, kl: i32, ret_ptr: i32, ret_size: i32| -> R {
            let key = match read_string(&mut c, kp, kl) {
                Ok(k) => k.to_ascii_lowercase(),
                Err(s) => return Ok(s as i32),
            };
            let value = match header_map(c.data_mut(), kind) {
                Ok(m) => match super::find(m, &key) {
                    Some(v) => v.to_owned(),
                    None => return Ok(Status::NotFound as i32),
                },
                Err(s) => return Ok(s as i32),
            };
            Ok(code(give(&mut c, value.as_bytes(), ret_ptr, ret_size)?))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: C<'_>, kind: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> R {
            let (key, value) = match (read_string(&mut c, kp, kl), read_string(&mut c, vp, vl)) {
                (Ok(k), Ok(v)) => (k.to_ascii_lowercase(), v),
                (Err(s), _) | (_, Err(s)) => return Ok(s as i32),
            };
            Ok(code(header_map(c.data_mut(), kind).map(|m| {
                // Envoy's setCopy: the first value is replaced, any others removed.
                match m.iter().position(|(k, _)| *k == key) {
                    Some(i) => {
                        m[i].1 = value;
                        let mut seen = false;
                        m.retain(|(k, _)| {
                            let keep = *k != key || !seen;
                            seen |= *k == key;
                            keep
                        });
                    }
                    None => m.push((key, value)),
                }
            })))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: C<'_>, kind: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> R {
            let (key, value) = match (read_string(&mut c, kp, kl), read_string(&mut c, vp, vl)) {
                (Ok(k), Ok(v)) => (k.to_ascii_lowercase(), v),
                (Err(s), _) | (_, Err(s)) => return Ok(s as i32),
            };
            Ok(code(
                header_map(c.data_mut(), kind).map(|m| m.push((key, value))),
            ))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: C<'_>, kind: i32, kp: i32, kl: i32| -> R {
            let key = match read_string(&mut c, kp, kl) {
                Ok(k) => k.to_ascii_lowercase(),
                Err(s) => return Ok(s as i32),
            };
            Ok(code(
                header_map(c.data_mut(), kind).map(|m| m.retain(|(k, _)| *k != key)),
            ))
        },
    )?;

    // --- properties ---
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: C<'_>, pp: i32, pl: i32, ret_ptr: i32, ret_size: i32| -> R {
            let path = match read(&mut c, pp, pl) {
                Ok(p) => property_path(&p),
                Err(s) => return Ok(s as i32),
            };
            let s = c.data();
            let value = s
                .streams
                .get(&s.effective)
                .and_then(|st| st.properties.get(&path))
                .or_else(|| s.vm_properties.get(&path))
                .cloned();
            match value {
                Some(v) => Ok(code(give(&mut c, &v, ret_ptr, ret_size)?)),
                None => Ok(Status::NotFound as i32),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: C<'_>, pp: i32, pl: i32, vp: i32, vl: i32| -> R {
            let (path, value) = match (read(&mut c, pp, pl), read(&mut c, vp, vl)) {
                (Ok(p), Ok(v)) => (property_path(&p), v),
                (Err(s), _) | (_, Err(s)) => return Ok(s as i32),
            };
            let s = c.data_mut();
            match stream(s) {
                Ok(st) => st.properties.insert(path, value),
                Err(_) => s.vm_properties.insert(path, value),
            };
            Ok(0)
        },
    )?;

    // --- shared data and queues ---
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: C<'_>, kp: i32, kl: i32, ret_ptr: i32, ret_size: i32, ret_cas: i32| -> R {
            let key = match read_string(&mut c, kp, kl) {
                Ok(k) => k,
                Err(s) => return Ok(s as i32),
            };
            let found = c.data().host.lock().get_data(&key);
            let Some((value, cas)) = found else {
                return Ok(Status::NotFound as i32);
            };
            if let Err(s) = give(&mut c, &value, ret_ptr, ret_size)? {
                return Ok(s as i32);
            }
            Ok(code(write_u32(&mut c, ret_cas, cas)))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: C<'_>, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32| -> R {
            let (key, value) = match (read_string(&mut c, kp, kl), read(&mut c, vp, vl)) {
                (Ok(k), Ok(v)) => (k, v),
                (Err(s), _) | (_, Err(s)) => return Ok(s as i32),
            };
            let status = c.data().host.lock().set_data(&key, &value, cas as u32);
            Ok(status as i32)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: C<'_>, np: i32, nl: i32, ret: i32| -> R {
            let name = match read_string(&mut c, np, nl) {
                Ok(n) => n,
                Err(s) => return Ok(s as i32),
            };
            let vm_id = c.data().vm_id.clone();
            let token = c.data().host.lock().register_queue(&vm_id, &name);
            Ok(code(write_u32(&mut c, ret, token)))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: C<'_>, vp: i32, vl: i32, np: i32, nl: i32, ret: i32| -> R {
            let (vm_id, name) = match (read_string(&mut c, vp, vl), read_string(&mut c, np, nl)) {
                (Ok(v), Ok(n)) => (v, n),
                (Err(s), _) | (_, Err(s)) => return Ok(s as i32),
            };
            let token = c.data().host.lock().resolve_queue(&vm_id, &name);
            match token {
                Some(t) => Ok(code(write_u32(&mut c, ret, t))),
                None => Ok(Status::NotFound as i32),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: C<'_>, token: i32, vp: i32, vl: i32| -> R {
            let value = match read(&mut c, vp, vl) {
                Ok(v) => v,
                Err(s) => return Ok(s as i32),
            };
            let status = c.data().host.lock().enqueue(token as u32, &value);
            Ok(status as i32)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: C<'_>, token: i32, ret_ptr: i32, ret_size: i32| -> R {
            let item = c.data().host.lock().dequeue(token as u32);
            match item {
                Ok(v) => Ok(code(give(&mut c, &v, ret_ptr, ret_size)?)),
                Err(s) => Ok(s as i32),
            }
        },
    )?;

    // --- stream control, local responses, outgoing calls ---
    linker.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut c: C<'_>, kind: i32| -> R {
            Ok(code(stream(c.data_mut()).and_then(|st| match kind {
                0 => {
                    st.resumed_request += 1;
                    Ok(())
                }
                1 => {
                    st.resumed_response += 1;
                    Ok(())
                }
                2 | 3 => Err(Status::Unimplemented),
                _ => Err(Status::BadArgument),
            })))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_close_stream",
        |mut c: C<'_>, kind: i32| -> R {
            if !(0..=3).contains(&kind) {
                return Ok(Status::BadArgument as i32);
            }
            Ok(code(stream(c.data_mut()).map(|st| st.closed = true)))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: C<'_>,
         status: i32,
         dp: i32,
         dl: i32,
         bp: i32,
         bl: i32,
         hp: i32,
         hl: i32,
         grpc_status: i32|
         -> R {
            let parts = (|| {
                let details = read_string(&mut c, dp, dl)?;
                let body = read(&mut c, bp, bl)?;
                let headers =
                    abi::deserialize_pairs(&read(&mut c, hp, hl)?).ok_or(Status::BadArgument)?;
                Ok::<_, Status>((details, body, lowercase(headers)))
            })();
            let (details, body, headers) = match parts {
                Ok(p) => p,
                Err(s) => return Ok(s as i32),
            };
            Ok(code(stream(c.data_mut()).map(|st| {
                st.local_response = Some(LocalResponse {
                    status: status as u32,
                    details,
                    body,
                    headers,
                    grpc_status,
                })
            })))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: C<'_>,
         up: i32,
         ul: i32,
         hp: i32,
         hl: i32,
         bp: i32,
         bl: i32,
         tp: i32,
         tl: i32,
         timeout_ms: i32,
         ret_token: i32|
         -> R {
            let parts = (|| {
                let upstream = read_string(&mut c, up, ul)?;
                let headers =
                    abi::deserialize_pairs(&read(&mut c, hp, hl)?).ok_or(Status::BadArgument)?;
                let body = read(&mut c, bp, bl)?;
                let trailers =
                    abi::deserialize_pairs(&read(&mut c, tp, tl)?).ok_or(Status::BadArgument)?;
                Ok::<_, Status>((upstream, lowercase(headers), body, lowercase(trailers)))
            })();
            let (upstream, headers, body, trailers) = match parts {
                Ok(p) => p,
                Err(s) => return Ok(s as i32),
            };
            // Envoy refuses a call without these.
            if [":method", ":path", ":authority"]
                .iter()
                .any(|h| super::find(&headers, h).is_none())
            {
                return Ok(Status::BadArgument as i32);
            }
            let s = c.data_mut();
            let token = s.next_token;
            s.next_token += 1;
            let context_id = s.effective;
            s.calls.push(HttpCall {
                token,
                context_id,
                upstream,
                headers,
                body,
                trailers,
                timeout: Duration::from_millis(timeout_ms as u32 as u64),
            });
            Ok(code(write_u32(&mut c, ret_token, token)))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut c: C<'_>, id: i32| -> R {
            let s = c.data_mut();
            let id = id as u32;
            if s.streams.contains_key(&id) || id == 1 || id == s.effective {
                s.effective = id;
                Ok(0)
            } else {
                Ok(Status::BadArgument as i32)
            }
        },
    )?;
    linker.func_wrap("env", "proxy_done", |_c: C<'_>| -> R {
        Ok(Status::NotFound as i32)
    })?;

    // --- metrics ---
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: C<'_>, kind: i32, np: i32, nl: i32, ret: i32| -> R {
            let kind = match kind {
                0 => MetricType::Counter,
                1 => MetricType::Gauge,
                2 => MetricType::Histogram,
                _ => return Ok(Status::BadArgument as i32),
            };
            let name = match read_string(&mut c, np, nl) {
                Ok(n) => n,
                Err(s) => return Ok(s as i32),
            };
            let id = c.data().host.lock().define_metric(kind, &name);
            Ok(code(write_u32(&mut c, ret, id)))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |c: C<'_>, id: i32, offset: i64| -> R {
            let host = c.data().host.clone();
            let mut shared = host.lock();
            Ok(match shared.metric_mut(id as u32) {
                Some((_, MetricType::Histogram)) => Status::BadArgument as i32,
                Some((v, _)) => {
                    *v = v.saturating_add_signed(offset);
                    0
                }
                None => Status::NotFound as i32,
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |c: C<'_>, id: i32, value: i64| -> R {
            let host = c.data().host.clone();
            let mut shared = host.lock();
            Ok(match shared.metric_mut(id as u32) {
                Some((v, MetricType::Counter)) => {
                    *v = v.saturating_add(value as u64);
                    0
                }
                Some((v, _)) => {
                    *v = value as u64;
                    0
                }
                None => Status::NotFound as i32,
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: C<'_>, id: i32, ret: i32| -> R {
            let value = c
                .data()
                .host
                .lock()
                .metric_mut(id as u32)
                .map(|(v, k)| (*v, k));
            match value {
                Some((_, MetricType::Histogram)) => Ok(Status::BadArgument as i32),
                Some((v, _)) => Ok(code(write_u64(&mut c, ret, v))),
                None => Ok(Status::NotFound as i32),
            }
        },
    )?;

    define_wasi(linker)
}

fn define_wasi(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    const W: &str = "wasi_snapshot_preview1";
    linker.func_wrap(
        W,
        "fd_write",
        |mut c: C<'_>, fd: i32, iovs: i32, n: i32, ret: i32| -> R {
            let level = match fd {
                1 => LogLevel::Info,
                2 => LogLevel::Error,
                _ => return Ok(WASI_BADF),
            };
            let mut text = Vec::new();
            for i in 0..n {
                let Ok(iov) = read(&mut c, iovs + i * 8, 8) else {
                    return Ok(WASI_FAULT);
                };
                let ptr = i32::from_le_bytes(iov[0..4].try_into().unwrap_or_default());
                let len = i32::from_le_bytes(iov[4..8].try_into().unwrap_or_default());
                match read(&mut c, ptr, len) {
                    Ok(b) => text.extend(b),
                    Err(_) => return Ok(WASI_FAULT),
                }
            }
            let written = text.len() as u32;
            let message = String::from_utf8_lossy(&text).trim_end().to_owned();
            let context_id = c.data().effective;
            c.data_mut().logs.push(LogEntry {
                level,
                message,
                context_id,
            });
            Ok(if write_u32(&mut c, ret, written).is_ok() {
                WASI_SUCCESS
            } else {
                WASI_FAULT
            })
        },
    )?;
    linker.func_wrap(
        W,
        "fd_read",
        |_c: C<'_>, _fd: i32, _iovs: i32, _n: i32, _ret: i32| -> R { Ok(WASI_BADF) },
    )?;
    linker.func_wrap(W, "fd_close", |_c: C<'_>, _fd: i32| -> R { Ok(WASI_BADF) })?;
    linker.func_wrap(
        W,
        "fd_seek",
        |_c: C<'_>, _fd: i32, _off: i64, _whence: i32, _ret: i32| -> R { Ok(WASI_BADF) },
    )?;
    linker.func_wrap(W, "fd_fdstat_get", |_c: C<'_>, _fd: i32, _ret: i32| -> R {
        Ok(WASI_BADF)
    })?;
    linker.func_wrap(W, "fd_prestat_get", |_c: C<'_>, _fd: i32, _ret: i32| -> R {
        Ok(WASI_BADF)
    })?;
    linker.func_wrap(
        W,
        "fd_prestat_dir_name",
        |_c: C<'_>, _fd: i32, _p: i32, _l: i32| -> R { Ok(WASI_BADF) },
    )?;
    linker.func_wrap(
        W,
        "args_sizes_get",
        |mut c: C<'_>, argc: i32, size: i32| -> R {
            let ok = write_u32(&mut c, argc, 0).and_then(|()| write_u32(&mut c, size, 0));
            Ok(if ok.is_ok() { WASI_SUCCESS } else { WASI_FAULT })
        },
    )?;
    linker.func_wrap(W, "args_get", |_c: C<'_>, _argv: i32, _buf: i32| -> R {
        Ok(WASI_SUCCESS)
    })?;
    linker.func_wrap(
        W,
        "environ_sizes_get",
        |mut c: C<'_>, count: i32, size: i32| -> R {
            let ok = write_u32(&mut c, count, 0).and_then(|()| write_u32(&mut c, size, 0));
            Ok(if ok.is_ok() { WASI_SUCCESS } else { WASI_FAULT })
        },
    )?;
    linker.func_wrap(W, "environ_get", |_c: C<'_>, _env: i32, _buf: i32| -> R {
        Ok(WASI_SUCCESS)
    })?;
    linker.func_wrap(
        W,
        "clock_time_get",
        |mut c: C<'_>, id: i32, _precision: i64, ret: i32| -> R {
            if !(0..=3).contains(&id) {
                return Ok(WASI_NOTSUP);
            }
            let now = c.data().host.now_nanos();
            Ok(if write_u64(&mut c, ret, now).is_ok() {
                WASI_SUCCESS
            } else {
                WASI_FAULT
            })
        },
    )?;
    linker.func_wrap(
        W,
        "clock_res_get",
        |mut c: C<'_>, _id: i32, ret: i32| -> R {
            Ok(if write_u64(&mut c, ret, 1).is_ok() {
                WASI_SUCCESS
            } else {
                WASI_FAULT
            })
        },
    )?;
    linker.func_wrap(W, "random_get", |mut c: C<'_>, ptr: i32, len: i32| -> R {
        if !(0..=1 << 20).contains(&len) {
            return Ok(WASI_INVAL);
        }
        let mut bytes = Vec::with_capacity(len as usize + 8);
        while bytes.len() < len as usize {
            let r = next_random(c.data_mut());
            bytes.extend_from_slice(&r.to_le_bytes());
        }
        bytes.truncate(len as usize);
        Ok(if write(&mut c, ptr, &bytes).is_ok() {
            WASI_SUCCESS
        } else {
            WASI_FAULT
        })
    })?;
    linker.func_wrap(
        W,
        "proc_exit",
        |_c: C<'_>, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::msg(format!(
                "the module called proc_exit({code})"
            )))
        },
    )?;
    linker.func_wrap(W, "sched_yield", |_c: C<'_>| -> R { Ok(WASI_SUCCESS) })?;
    linker.func_wrap(
        W,
        "poll_oneoff",
        |_c: C<'_>, _i: i32, _o: i32, _n: i32, _r: i32| -> R { Ok(WASI_NOTSUP) },
    )?;
    Ok(())
}

/// Defines every function `module` imports that this host does not implement: in strict
/// mode a call traps with the function's name; otherwise it returns `UNIMPLEMENTED` (or
/// zeros) and is recorded. Imports of memories, tables or globals fail the load.
pub(crate) fn stub_unknown(linker: &mut Linker<State>, module: &Module) -> wasmtime::Result<()> {
    for import in module.imports() {
        let (m, name) = (import.module(), import.name());
        if DEFINED.contains(&(m, name)) {
            continue;
        }
        let Some(ty) = import.ty().func().cloned() else {
            return Err(wasmtime::Error::msg(format!(
                "the module imports {m}.{name}, which is not a function; this host provides only functions"
            )));
        };
        let full = format!("{m}.{name}");
        let result_types: Vec<ValType> = ty.results().collect();
        linker.func_new(m, name, ty, move |mut c, _params, results| {
            if c.data().strict {
                return Err(wasmtime::Error::msg(format!(
                    "unimplemented host call {full} (strict mode)"
                )));
            }
            c.data_mut().unimplemented.push(full.clone());
            for (i, (r, t)) in results.iter_mut().zip(&result_types).enumerate() {
                *r = match t {
                    ValType::I32 if i == 0 => Val::I32(Status::Unimplemented as i32),
                    ValType::I64 => Val::I64(0),
                    ValType::F32 => Val::F32(0),
                    ValType::F64 => Val::F64(0),
                    _ => Val::I32(0),
                };
            }
            Ok(())
        })?;
    }
    Ok(())
}
