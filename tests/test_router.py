"""Routing: static paths, one-parameter patterns, 404 versus 405."""
from gateway.http.router import Router


async def h(*args):
    return None


def router():
    r = Router()
    r.add("POST", "/v1/messages", h, ("app",))
    r.add("GET", "/v1/messages/{id}", h, ("app",))
    r.add("PATCH", "/admin/v1/senders/{number}", h, ("admin",))
    return r


def test_static_route_matches():
    route, params, known = router().match("POST", "/v1/messages")
    assert route.name == "/v1/messages" and params == [] and known


def test_parameter_is_captured():
    route, params, _ = router().match("PATCH", "/admin/v1/senders/+15550000001")
    assert route.name == "/admin/v1/senders/{number}" and params == ["+15550000001"]


def test_known_path_with_wrong_method_is_405_material():
    r = router()
    route, _, known = r.match("DELETE", "/v1/messages/abc")
    assert route is None and known
    assert r.allowed_methods("/v1/messages/abc") == ["GET", "HEAD"]
    assert r.allowed_methods("/v1/messages") == ["POST"]


def test_head_takes_the_get_route_and_nothing_else():
    r = router()
    route, params, known = r.match("HEAD", "/v1/messages/abc")
    assert route.name == "/v1/messages/{id}" and params == ["abc"] and known
    route, _, known = r.match("HEAD", "/v1/messages")
    assert route is None and known


def test_unknown_path_is_404_material():
    route, _, known = router().match("GET", "/v2/nothing")
    assert route is None and not known
