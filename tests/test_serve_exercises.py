"""Notebook 04's exercises: each solution passes, each blank says 'not answered yet', wrong answers fail."""

from __future__ import annotations

from inferlab.exercises import serving


def _run(name: str) -> dict:
    scope: dict = {}
    exec(serving.SOLUTIONS[name], scope)  # noqa: S102 — our own solution text
    return scope


def test_solutions_pass():
    assert serving.check_token_latencies(_run("token_latencies")["token_latencies"])
    assert serving.check_littles_law(_run("littles_law")["answer"])
    assert serving.check_status_codes(_run("status_code")["answer"])


def test_blanks_are_not_answered_and_wrong_answers_fail():
    def blank(sent_at, token_times):
        raise NotImplementedError

    for check in (serving.check_token_latencies(blank), serving.check_littles_law(None), serving.check_status_codes(None)):
        assert not check and "not answered" in check.message
    assert not serving.check_token_latencies(lambda s, t: (t[0], 0.0))  # forgot to subtract the send time
    assert not serving.check_littles_law(64.0)
    assert not serving.check_status_codes({**serving.EXPECTED_STATUS, "unknown model": 400})



def test_the_expected_status_codes_match_the_server_tests():
    from test_serve import BAD_REQUESTS

    statuses = {status for _, _, status in BAD_REQUESTS}
    assert {serving.EXPECTED_STATUS["max_tokens past the context"], serving.EXPECTED_STATUS["unknown model"],
            serving.EXPECTED_STATUS["body too large"]} <= statuses
