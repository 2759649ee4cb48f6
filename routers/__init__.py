"""The gidgethub routers, one module per event concern, combined once."""

from gidgethub import routing

from . import installation, ping, pull_request, push

# The combined router copies the routes: register handlers in the modules above, not here.
router = routing.Router(ping.router, push.router, pull_request.router, installation.router)
