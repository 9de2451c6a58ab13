"""The public surface of jaxpipe: every name imports and says what it is."""

import inspect

import jaxpipe


def test_every_public_name_imports_and_has_a_docstring():
    for name in jaxpipe.__all__:
        obj = getattr(jaxpipe, name)
        assert inspect.getdoc(obj), f"jaxpipe.{name} has no docstring"


def test_profile_and_coarsen_are_the_functions_the_issue_names():
    assert callable(jaxpipe.profile) and callable(jaxpipe.coarsen)
    assert "micro_batch_sizes" in inspect.signature(jaxpipe.profile).parameters
