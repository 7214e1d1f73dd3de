"""The blocks the scripts share are the same text everywhere (tools/shared_blocks.py)."""
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / 'tools'))
import shared_blocks as sb  # noqa: E402

REFERENCE = (REPO / sb.REFERENCE).read_text()
CASES = [(script, block) for script, blocks in sb.CARRIED.items() for block in blocks]


def test_reference_defines_every_block():
    assert set(sb.parse(REFERENCE)) == set(sb.ALL)


@pytest.mark.parametrize('script, block', CASES, ids=[f'{s}:{b}' for s, b in CASES])
def test_block_is_identical_to_airbench94(script, block):
    path = REPO / script
    assert path.exists(), f'{script} is missing'
    problems = [msg for name, msg in sb.drift(path.read_text(), REFERENCE, sb.CARRIED[script], script)
                if name == block]
    assert not problems, problems[0]


@pytest.mark.parametrize('script', sorted(sb.CARRIED))
def test_no_unknown_blocks(script):
    own = sb.parse((REPO / script).read_text(), script)
    assert set(own) <= set(sb.ALL), set(own) - set(sb.ALL)


def test_an_edited_copy_is_caught_and_named():
    text = (REPO / 'airbench95.py').read_text()
    edited = text.replace('            yield images[idx], labels[idx]', '            yield images[idx].clone(), labels[idx]')
    assert edited.count('.clone(), labels[idx]') == 1
    problems = sb.drift(edited, REFERENCE, sb.CARRIED['airbench95.py'], 'airbench95.py')
    assert [name for name, _ in problems] == ['loader']
    assert 'airbench95.py' in problems[0][1] and "'loader'" in problems[0][1] and '.clone()' in problems[0][1]
    assert sb.drift(sb.replace_blocks(edited, REFERENCE, sb.CARRIED['airbench95.py']), REFERENCE,
                    sb.CARRIED['airbench95.py']) == []  # sync repairs it


def test_missing_and_malformed_markers():
    text = (REPO / 'airbench95.py').read_text()
    no_tta = text.replace('#=== shared: tta\n', '').replace('#=== end shared: tta\n', '')
    assert [name for name, _ in sb.drift(no_tta, REFERENCE, ['tta'])] == ['tta']
    with pytest.raises(sb.MarkerError, match='never closed'):
        sb.parse('#=== shared: a\nx\n')
    with pytest.raises(sb.MarkerError, match='opens inside'):
        sb.parse('#=== shared: a\n#=== shared: b\n#=== end shared: b\n#=== end shared: a\n')
