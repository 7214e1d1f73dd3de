"""The blocks the scripts share are the same text everywhere (tools/shared_blocks.py), and the
checker reports every way the markers and the lists can go wrong."""
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / 'tools'))
import shared_blocks as sb  # noqa: E402

REFERENCES = {name: (REPO / script).read_text() for name, script in sb.REFERENCE.items()}
CASES = [(script, block) for script, blocks in sb.CARRIED.items() for block in blocks]


def test_every_reference_defines_its_blocks():
    for name, script in sb.REFERENCE.items():
        assert name in sb.parse(REFERENCES[name], script), (name, script)


@pytest.mark.parametrize('script, block', CASES, ids=[f'{s}:{b}' for s, b in CASES])
def test_block_is_identical_to_its_reference(script, block):
    path = REPO / script
    assert path.exists(), f'{script} is missing'
    problems = [msg for name, msg in sb.drift(path.read_text(), REFERENCES, sb.CARRIED[script], script)
                if name == block]
    assert not problems, problems[0]


def test_the_whole_project_passes_the_check():
    assert sb.problems() == []


def test_an_edited_copy_is_caught_and_named():
    text = (REPO / 'airbench95.py').read_text()
    edited = text.replace('            yield images[idx], labels[idx]', '            yield images[idx].clone(), labels[idx]')
    assert edited.count('.clone(), labels[idx]') == 1
    problems = sb.drift(edited, REFERENCES, sb.CARRIED['airbench95.py'], 'airbench95.py')
    assert [name for name, _ in problems] == ['loader']
    assert 'airbench95.py' in problems[0][1] and "'loader'" in problems[0][1] and '.clone()' in problems[0][1]
    assert sb.drift(sb.replace_blocks(edited, REFERENCES, sb.CARRIED['airbench95.py']), REFERENCES,
                    sb.CARRIED['airbench95.py']) == []  # sync repairs it


def test_a_missing_block_is_named():
    text = (REPO / 'airbench95.py').read_text()
    no_tta = text.replace('#=== shared: tta\n', '').replace('#=== end shared: tta\n', '')
    problems = sb.drift(no_tta, REFERENCES, sb.CARRIED['airbench95.py'], 'airbench95.py')
    assert [name for name, _ in problems] == ['tta'] and 'lacks' in problems[0][1]


def test_a_reference_that_lost_its_block_is_reported_not_a_crash(copy_of_repo):
    path = copy_of_repo / 'airbench94.py'
    path.write_text(path.read_text().replace('#=== shared: tta\n', '').replace('#=== end shared: tta\n', ''))
    found = sb.problems(copy_of_repo)
    assert any(m.startswith("airbench94.py, the reference of the shared block 'tta', lacks it") for m in found), found
    references = {name: (copy_of_repo / script).read_text() for name, script in sb.REFERENCE.items()}
    with pytest.raises(sb.MarkerError, match="reference of the shared block 'tta'"):
        sb.replace_blocks((copy_of_repo / 'airbench95.py').read_text(), references, ['tta'])


@pytest.mark.parametrize('text, match', [
    ('#=== shared: a\nx\n', 'never closed'),
    ('#=== shared: a\n#=== shared: b\n#=== end shared: b\n#=== end shared: a\n', 'opens inside'),
    ('#=== shared: a\n#=== end shared: a\n#=== shared: a\n#=== end shared: a\n', 'appears twice'),
    ('#=== end shared: a\n', 'closes no open block'),
    ('#=== shared: a\n#=== end shared: b\n', 'closes'),
    ('#=== shared:a\n#=== end shared: a\n', 'malformed marker'),
    ('#=== shared: a \n#=== end shared: a\n', 'malformed marker'),
    ('    #=== shared: a\n', 'malformed marker'),
    ('#=== start shared: a\n', 'malformed marker'),
])
def test_malformed_markers(text, match):
    with pytest.raises(sb.MarkerError, match=match):
        sb.parse(text)


def test_a_block_carried_but_not_listed_is_reported():
    text = (REPO / 'airbench94_muon.py').read_text()
    listed = [b for b in sb.CARRIED['airbench94_muon.py'] if b != 'reinit']
    problems = sb.drift(text, REFERENCES, listed, 'airbench94_muon.py')
    assert [name for name, _ in problems] == ['reinit'] and 'not listed' in problems[0][1]
    unknown = text + '\n#=== shared: mystery\npass\n#=== end shared: mystery\n'
    problems = sb.drift(unknown, REFERENCES, sb.CARRIED['airbench94_muon.py'], 'airbench94_muon.py')
    assert [name for name, _ in problems] == ['mystery'] and 'no reference script' in problems[0][1]


def test_a_function_defined_twice_is_reported():
    text = 'def f():\n    pass\n\n\nclass C:\n    pass\n\n\ndef f():\n    return 1\n'
    problems = sb.defined_twice(text, 'x.py')
    assert len(problems) == 1 and "'f' is defined twice" in problems[0] and 'x.py:9' in problems[0]
    for script in sb.CARRIED:
        assert sb.defined_twice((REPO / script).read_text(), script) == []


@pytest.fixture
def copy_of_repo(tmp_path):
    """The scripts and their folders, copied so the checker can be run on a broken project."""
    for script in sb.project_scripts():
        (tmp_path / script).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / script, tmp_path / script)
    return tmp_path


def test_an_unlisted_script_and_a_listed_missing_one_are_reported(copy_of_repo):
    (copy_of_repo / 'airbench97.py').write_text((copy_of_repo / 'airbench95.py').read_text())
    (copy_of_repo / 'legacy').mkdir(exist_ok=True)
    (copy_of_repo / 'legacy' / 'old_record.py').write_text('print(1)\n')
    (copy_of_repo / 'airbench96.py').unlink()
    found = sb.problems(copy_of_repo)
    assert any(m.startswith('airbench97.py is not listed') for m in found), found
    assert any(m.startswith('legacy/old_record.py is not listed') for m in found), found
    assert any(m.startswith('airbench96.py is listed') and 'does not exist' in m for m in found), found


def test_check_reports_a_malformed_marker_and_a_double_definition_in_the_project(copy_of_repo):
    path = copy_of_repo / 'airbench95.py'
    text = path.read_text()
    path.write_text(text.replace('#=== end shared: tta\n', '#=== end shared tta\n', 1)
                    + '\n\ndef train_steps(opt, n_train):\n    return 0\n')
    found = sb.problems(copy_of_repo)
    assert any('airbench95.py' in m and 'malformed marker' in m for m in found), found
    assert any("airbench95.py" in m and "'train_steps' is defined twice" in m for m in found), found


def test_the_harness_comes_last_under_its_banner():
    for script in sb.CARRIED:
        assert sb.harness_layout((REPO / script).read_text(), script) == []
    text = (REPO / 'airbench95.py').read_text()
    moved = text.replace(sb.HARNESS_BANNER, '')
    assert 'exactly once' in sb.harness_layout(moved, 'x.py')[0]
    edited = text.replace(sb.HARNESS_BANNER, sb.HARNESS_BANNER.replace('Harness: the same', 'Harness: much the same'))
    assert 'exactly once' in sb.harness_layout(edited, 'x.py')[0]
    # code between the banner and the harness block
    wedged = text.replace(sb.HARNESS_BANNER, sb.HARNESS_BANNER + '\ndef helper():\n    pass\n', 1)
    assert 'nothing before it' in sb.harness_layout(wedged, 'x.py')[0]
    # a shared block below the harness
    loader = sb.parse(text)['loader']
    below = text + '\n#=== shared: extra\n' + loader + '#=== end shared: extra\n'
    assert 'only main()' in sb.harness_layout(below, 'x.py')[0]


def test_a_name_a_script_never_imports_is_reported():
    text = (REPO / 'airbench95.py').read_text()
    assert sb.undefined_names(text, 'airbench95.py') == []
    broken = text.replace('import signal\n', '', 1)
    problems = sb.undefined_names(broken, 'airbench95.py')
    assert problems == ["airbench95.py: entry() uses 'signal', which the script never defines or imports"]
    # and every script must carry airbench94's harness verbatim, whatever its list says
    drifted = sb.drift(broken, REFERENCES, sb.CARRIED['airbench95.py'], 'airbench95.py')
    assert [name for name, _ in drifted] == ['harness']


def test_a_forward_reference_is_reported_and_main_may_use_anything():
    text = ('def early():\n    return LATER + helper()\n\n\ndef helper():\n    return 1\n\n\n'
            'class Late:\n    def method(self):\n        return early() + LATER\n\n\nLATER = 2\n\n\n'
            'def main():\n    return main_only()\n\n\ndef main_only():\n    return 0\n')
    problems = sb.forward_references(text, 'x.py')
    assert [p.split(': define')[0] for p in problems] == [
        "x.py:1: early uses 'LATER', which is defined only below it (line 14)",
        "x.py:1: early uses 'helper', which is defined only below it (line 5)",
        "x.py:9: Late uses 'LATER', which is defined only below it (line 14)"]  # not early; main() is exempt


def test_every_script_reads_top_to_bottom():
    for script in sb.CARRIED:
        assert sb.forward_references((REPO / script).read_text(), script) == []


def test_readme_lists_each_scripts_sizes():
    """README's "How a script reads" table is what `tools/shared_blocks.py sizes` counts."""
    readme = (REPO / 'README.md').read_text()
    for script in sb.project_scripts():
        n = sb.sizes((REPO / script).read_text())
        row = f"| `{script}` | {n['header']} | {n['setup']} | {n['method']} | {n['harness']} |"
        assert row in readme, row


def test_airbench94_keeps_the_skeletons_budget():
    """Issue 27's budget: the Setup at most 80 lines and the method's first definition at line 150 or
    earlier. The harness (from its banner to the end of the file, check_hyp and main() included) is held
    at its present 438 lines, so that it cannot grow unnoticed: docs/contributing.md says why it is not
    at the issue's 220."""
    text = (REPO / 'airbench94.py').read_text()
    sizes = sb.sizes(text)
    assert sizes['setup'] <= 80, sizes
    lines = text.splitlines()
    setup_end = lines.index('#=== end shared: setup')
    first = next(i for i, line in enumerate(lines[setup_end:], setup_end + 1) if line.startswith(('def ', 'class ')))
    assert first <= 150, first
    assert sizes["harness"] <= 438, sizes


def test_nothing_in_the_repository_points_outside_it():
    """A clone has only the repository: no tracked file but a log names the workplace's folder beside it."""
    listed = subprocess.run(['git', 'ls-files'], capture_output=True, text=True, cwd=REPO)
    if listed.returncode != 0:
        pytest.skip('not a git checkout')
    files = [REPO / name for name in listed.stdout.splitlines() if not name.startswith(('logs/', 'scratch/'))]
    marker = '../' + 'shared'  # split, so that this file does not name it
    named = [str(f.relative_to(REPO)) for f in files
             if f.is_file() and f.suffix in ('.py', '.md', '.toml', '.sh', '.txt', '') and marker in f.read_text(errors='replace')]
    assert named == [], f'these files name {marker}, which a clone does not have: {named}'
