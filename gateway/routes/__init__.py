"""The HTTP control plane's routes, one module per group; `gateway.control.routers()` lists them.

Each route admits its caller on the headers before it reads a body (`Control.admit`, then
`Control.body`), and answers through `gateway.control.json_response`.
"""

# NOTE: gateway.control imports the route modules at its end; importing it first keeps that
# order whichever module a caller imports first.
import gateway.control  # noqa: F401
