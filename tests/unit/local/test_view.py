"""Local mode's status view: the law's target told as what each stage added."""

from __future__ import annotations

from kubeplex.operator.local.view import by_stage


def test_the_target_reads_as_the_sum_of_its_stages() -> None:
    assert by_stage([["slo", 2], ["hold", 1]]) == "3 = 2 slo + 1 hold"
    assert by_stage([["slo", 3], ["rate_limit", -1]]) == "2 = 3 slo - 1 rate_limit"
    assert by_stage([["no data", 1]]) == "1 = 1 no data"
