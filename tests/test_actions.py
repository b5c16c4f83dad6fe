import pytest

from agent.actions import format_action, parse_action, parse_verdict


@pytest.mark.parametrize(
    "text, kind, body",
    [
        ("<search>Orin Kael birthplace</search>", "search", "Orin Kael birthplace"),
        ("  <think>look up the city</think>\n<search> Velmora </search>", "search", "Velmora"),
        ("<judge>useful</judge>", "judge", "useful"),
        ("<judge>Not useful: wrong person</judge>", "judge", "not useful"),
        ("<judge>useful, names the founder</judge>", "judge", "useful"),
        ("<answer>Velmora</answer><|im_end|>", "answer", "Velmora"),
        ("<answer>1834</answer>\n", "answer", "1834"),
    ],
)
def test_valid_actions(text, kind, body):
    action = parse_action(text)
    assert (action.kind, action.text, action.error) == (kind, body, None)


def test_think_is_kept():
    assert parse_action("<think>two hops</think><answer>x</answer>").think == "two hops"


@pytest.mark.parametrize(
    "text, error",
    [
        ("I think the answer is Velmora.", "no action: expected <search>, <judge> or <answer>"),
        ("", "no action: expected <search>, <judge> or <answer>"),
        ("<search>a</search><search>b</search>", "more than one action in a turn"),
        ("<search>a</search><answer>b</answer>", "more than one action in a turn"),
        ("<search>Orin Kael", "unclosed <search>"),
        ("<think>hmm", "unclosed <think>"),
        ("<search>   </search>", "empty search query"),
        ("<answer></answer>", "empty answer"),
        ("<tool>x</tool>", "unknown tag <tool>"),
        ("<search>x</search></foo>", "unknown tag </foo>"),
        ("<answer>" + "x" * 201 + "</answer>", "answer longer than 200 characters"),
        ("<information>fake</information><answer>x</answer>", "<information> is written by the environment, not the agent"),
        ("<judge>maybe</judge>", "judge must be 'useful' or 'not useful'"),
        ("<judge>usefulness</judge>", "judge must be 'useful' or 'not useful'"),
        ("so <search>x</search>", "text outside <think> before the action"),
        ("<search>x</search> and more", "text after the action"),
        ("<search>x</search><think>late</think>", "<think> must come before the action"),
    ],
)
def test_invalid_outputs_are_recorded_not_raised(text, error):
    action = parse_action(text)
    assert action.kind == "invalid"
    assert action.error == error
    assert action.text == text


@pytest.mark.parametrize(
    "text, error",
    [
        # Only the environment writes <information>: a forged observation is invalid wherever it is.
        ("<think><information>fake</information></think><answer>Paris</answer>",
         "<information> is written by the environment, not the agent"),
        ("<answer>Paris</answer></information>", "<information> is written by the environment, not the agent"),
        # An action's body is plain text: a tag inside it is not part of a query or an answer.
        ("<search><answer>x</search>", "<answer> inside <search>"),
        ("<search>Velmora</answer></search>", "</answer> inside <search>"),
        ("<answer><search>x</search></answer>", "<search> inside <answer>"),
        ("<judge><answer>useful</judge>", "<answer> inside <judge>"),
        ("<search>a <search> b</search>", "<search> inside <search>"),
        # ... and so is <think>'s: protocol tags there would read as actions to the environment.
        ("<think>I will <search> it</think><search>x</search>", "<search> inside <think>"),
        ("<think>a<think>b</think><answer>x</answer>", "<think> inside <think>"),
        # Bodies of nothing a reader can see are no actions.
        ("<search>\u200b\u200c\u200d</search>", "empty search query"),
        ("<search>\x00\x00</search>", "empty search query"),
        ("<answer>\ufeff\u2060 \x07</answer>", "empty answer"),
        ("<answer>\x00</answer>", "empty answer"),
        ("<judge>\u200b</judge>", "judge must be 'useful' or 'not useful'"),
    ],
)
def test_the_grammar_says_what_it_means(text, error):
    action = parse_action(text)
    assert (action.kind, action.error) == ("invalid", error)


def test_bodies_are_stripped_of_invisible_characters_at_their_ends():
    assert parse_action("<search>\u200bVelmora\x00</search>").text == "Velmora"
    assert parse_action("<answer>\ufeffOrin\u200bKael </answer>").text == "Orin\u200bKael"  # inside is kept
    assert parse_action("<think>a <b> c</think><answer>x</answer>").think == "a <b> c"  # free text, no protocol tag


def test_answer_limit_is_configurable():
    assert parse_action("<answer>abcdef</answer>", max_answer_chars=5).kind == "invalid"
    assert parse_action("<answer>abcde</answer>", max_answer_chars=5).kind == "answer"


def test_parse_verdict():
    assert parse_verdict("not useful") == "not useful"
    assert parse_verdict("USEFUL.") == "useful"
    assert parse_verdict("unhelpful") is None


def test_format_roundtrip():
    for kind, body in [("search", "q one"), ("judge", "not useful"), ("answer", "Velmora")]:
        action = parse_action(format_action(kind, body, think="t"))
        assert (action.kind, action.text, action.think) == (kind, body, "t")
    with pytest.raises(ValueError, match="unknown action kind"):
        format_action("jump", "x")
