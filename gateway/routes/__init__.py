"""The HTTP control plane's routes, one module per group; `gateway.control.routers()` lists them.

Each route admits its caller on the headers before it reads a body (`Control.admit`, then
`Control.body`), and answers through `gateway.routes.base.json_response`.
"""
