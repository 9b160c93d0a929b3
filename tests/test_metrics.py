import pytest

from training_core.metrics import accuracy, anls, anls_standard, auroc, exact_match, normalized_levenshtein


def test_anls_exact_and_partial():
    assert anls("1998", ["1998"]) == 1.0
    # one substitution in 4 characters: NL = 0.25 -> 0.75
    assert anls("1997", ["1998"]) == pytest.approx(0.75)
    # normalised by the longer string: "abc" vs "abcd" -> 1/4
    assert anls("abc", ["abcd"]) == pytest.approx(0.75)


def test_anls_is_case_sensitive_as_the_recipe():
    # "Apple" vs "apple": 1 edit / 5 = 0.2 -> 0.8 (the standard variant ignores case -> 1.0)
    assert anls("Apple", ["apple"]) == pytest.approx(0.8)
    assert anls_standard("Apple", ["apple"]) == 1.0
    assert anls_standard("  New   York ", ["new york"]) == 1.0


def test_anls_threshold_boundary_is_strict():
    # NL exactly 0.5 scores 0 (strict <); just below scores 1 - NL
    assert normalized_levenshtein("ab", "cb") == 0.5
    assert anls("ab", ["cb"]) == 0.0
    assert anls("abc", ["xbc"]) == pytest.approx(2 / 3)  # NL = 1/3 < 0.5
    assert anls("ab", ["cb"], threshold=0.51) == pytest.approx(0.5)


def test_anls_max_over_gold_answers():
    # "December 5": 5/10 -> 0 (not < 0.5); "Dec 5th": 2/7 -> 0.714; "dec 5": 1/5 -> 0.8 (the max)
    assert anls("Dec 5", ["December 5", "Dec 5th", "dec 5"]) == pytest.approx(0.8)
    assert anls("Dec 5", ["December 5", "Dec 5th"]) == pytest.approx(1 - 2 / 7)
    assert anls("x", ["abc", "x", "y"]) == 1.0


def test_anls_prediction_post_processing_only():
    assert anls("  42. ", ["42"]) == 1.0  # spaces and trailing dots stripped from the prediction
    assert anls("42", [" 42"]) == pytest.approx(2 / 3)  # gold answers are not normalised
    assert anls("", ["42"]) == 0.0
    assert anls(" . ", ["."]) == 0.0  # empty after stripping


def test_exact_match_and_accuracy():
    assert exact_match(" Yes.", "yes")
    assert exact_match("BabyCrawling", "babycrawling")
    assert not exact_match("yes, it is", "yes")
    assert accuracy(["yes", "No.", "maybe"], ["yes", "no", "no"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="3 predictions for 2 answers"):
        accuracy(["a", "b", "c"], ["a", "b"])


def test_auroc_hand_cases():
    assert auroc([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]) == 1.0
    assert auroc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    # pairs (pos, neg): (0.6,0.3) win, (0.6,0.6) tie, (0.2,0.3) loss, (0.2,0.6) loss -> 1.5 / 4
    assert auroc([0.6, 0.2, 0.3, 0.6], [1, 1, 0, 0]) == pytest.approx(0.375)
    with pytest.raises(ValueError, match="positive and one negative"):
        auroc([0.1, 0.2], [1, 1])
