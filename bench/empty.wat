;; The cheapest possible proxy-wasm HTTP filter: the exports the SDK-based filters need per
;; stream (context create, request headers, delete), each doing nothing. In the bench it
;; shows the fixed per-request cost of Envoy's wasm filter itself, the floor below which no
;; wasm filter can go.
(module
  (memory (export "memory") 2)
  (func (export "malloc") (param i32) (result i32) i32.const 1024)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_delete") (param i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) i32.const 0))
