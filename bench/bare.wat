;; The host calls canary.wasm makes on its rule path, and nothing else: read `x-canary`,
;; replace `x-maille-cluster` with `canary`. No SDK, no Rust: in the bench it shows what
;; these two host calls cost in Envoy's wasm filter, the floor for any wasm filter that
;; routes by a request header.
(module
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $replace (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 16) "x-canary")
  (data (i32.const 32) "x-maille-cluster")
  (data (i32.const 64) "canary")
  ;; The host copies the header value here; one scratch buffer is enough.
  (func (export "malloc") (param i32) (result i32) i32.const 8192)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_delete") (param i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    ;; map type 0: request headers
    (drop (call $get (i32.const 0) (i32.const 16) (i32.const 8) (i32.const 128) (i32.const 136)))
    (drop (call $replace (i32.const 0) (i32.const 32) (i32.const 16) (i32.const 64) (i32.const 6)))
    i32.const 0))
