;; Routing without reading the request: one callback (request headers) that writes
;; `x-maille-cluster: canary` and nothing else; no context create/delete callbacks, no header
;; read. Next to bare.wat it shows what reading one header value costs in Envoy's wasm host
;; (the host calls back into the module to allocate the value's copy).
(module
  (import "env" "proxy_replace_header_map_value" (func $replace (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 32) "x-maille-cluster")
  (data (i32.const 64) "canary")
  (func (export "malloc") (param i32) (result i32) i32.const 1024)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    ;; map type 0: request headers
    (drop (call $replace (i32.const 0) (i32.const 32) (i32.const 16) (i32.const 64) (i32.const 6)))
    i32.const 0))
