"""The gidgethub routers, one module per event concern, combined once."""

from gidgethub import routing

router = routing.Router()
