"""The training loop of airbench94, 95, 96 and 94_compiled, recorded step by step and compared
with the method written out here independently: the lr multiplier of every step, the optimizer
groups' lr and weight decay, the lookahead decay of every sync, and in which epochs the
whitening bias trains. Two runs each, so that a run inheriting state from the one before fails."""
import copy
import math

import pytest
import torch

from conftest import load_script, train_on

STEPS_PER_EPOCH, EPOCHS = 10, 5  # batches of 200 from the 2,000 synthetic images
TOTAL = STEPS_PER_EPOCH * EPOCHS


def expected_multiplier(step, start, peak_at, end):
    """Piecewise linear: start at step 0, 1.0 at step floor(peak_at * TOTAL), end at step TOTAL."""
    peak = math.floor(peak_at * TOTAL)
    if step <= peak:
        return start + (1.0 - start) * step / peak
    return 1.0 + (end - 1.0) * (step - peak) / (TOTAL - peak)


def expected_groups(o):
    """(lr, weight decay) of the BatchNorm-bias group and of the other group, from the decoupled values."""
    kilostep = 1024 * (1 + 1 / (1 - o['momentum']))
    lr = o['lr'] / kilostep
    decay = o['weight_decay'] * o['batch_size'] / kilostep  # per step, whatever the lr
    return [(lr * o['bias_scaler'], decay / (lr * o['bias_scaler'])), (lr, decay / lr)]


def record_training(m, hyp, data, monkeypatch, runs=2):
    """Trains `runs` runs of module m and returns, per run, what each optimizer step and each lookahead
    sync saw."""
    per_run, current = [], {}
    make_optimizer = m.make_optimizer

    def recording_optimizer(model, opt):
        optimizer = make_optimizer(model, opt)

        def before_step(optimizer, args, kwargs):
            bias = model[0].bias
            in_a_group = any(p is bias for g in optimizer.param_groups for p in g['params'])
            current['steps'].append({'lr': [g['lr'] for g in optimizer.param_groups],
                                     'weight_decay': [g['weight_decay'] for g in optimizer.param_groups],
                                     'bias_trains': in_a_group and bias.grad is not None and bias.requires_grad})
        optimizer.register_step_pre_hook(before_step)
        return optimizer

    class RecordingLookahead(m.LookaheadState):
        def update(self, net, decay):
            current['syncs'].append((len(current['steps']), decay))
            return super().update(net, decay)

    monkeypatch.setattr(m, 'make_optimizer', recording_optimizer)
    monkeypatch.setattr(m, 'LookaheadState', RecordingLookahead)
    dev = m.Device('cpu')
    extra = {'net': m.compile_net(hyp, dev)} if hasattr(m, 'compile_net') else {}
    for run in range(1, runs + 1):
        current = {'steps': [], 'syncs': []}
        result = train_on(m, hyp, dev, data, seed=run, run=run, **extra)
        assert result['steps'] == TOTAL
        per_run.append(current)
    return per_run


# airbench95's train() is airbench94's (tests/test_runs.py checks it) and so is its schedule, at its own
# hyperparameters; airbench96's knots differ.
@pytest.mark.parametrize('name', ['airbench94', 'airbench96', 'airbench94_compiled'])
def test_schedule_groups_lookahead_and_bias_freeze_per_step(name, data, monkeypatch):
    m = load_script(name)
    hyp = copy.deepcopy(m.hyp)
    hyp['opt'].update(batch_size=200, train_epochs=float(EPOCHS))
    hyp['net']['widths'] = {'block1': 8, 'block2': 16, 'block3': 16}
    hyp['net']['tta_level'] = 0
    o = hyp['opt']
    groups = expected_groups(o)
    for rec in record_training(m, hyp, data, monkeypatch):
        assert len(rec['steps']) == TOTAL
        for step, seen in enumerate(rec['steps']):
            multiplier = expected_multiplier(step, o['lr_start'], o['lr_peak_at'], o['lr_end'])
            assert len(seen['lr']) == len(seen['weight_decay']) == len(groups)  # no group lost or merged
            for (lr, wd), seen_lr, seen_wd in zip(groups, seen['lr'], seen['weight_decay']):
                assert seen_lr == pytest.approx(lr * multiplier, rel=1e-9), (step, seen_lr, lr * multiplier)
                assert seen_wd == pytest.approx(wd, rel=1e-9)
            epoch = step // STEPS_PER_EPOCH + 1
            assert seen['bias_trains'] == (epoch <= 3), (step, epoch)  # epochs 1-3 only
        decay_every = [(s, 0.95**5 * (s / TOTAL)**3) for s in range(5, TOTAL + 1, 5)]
        assert len(rec['syncs']) == len(decay_every) + 1
        for (step, decay), (want_step, want) in zip(rec['syncs'], decay_every + [(TOTAL, 1.0)]):
            assert step == want_step and decay == pytest.approx(want, rel=1e-12)
