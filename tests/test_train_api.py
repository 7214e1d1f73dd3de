"""train() and the loader as a caller uses them: the model comes back trained, its evaluation is the
run's, a loader can be subset before its first epoch and not after, and a callback sees every epoch."""
import copy

import pytest
import torch

from conftest import load_script

SCRIPTS = ['airbench94', 'airbench95', 'airbench96', 'airbench94_compiled', 'airbench94_muon', 'airbench96_faster']


def tiny(m, epochs=2):
    hyp = copy.deepcopy(m.hyp)
    hyp['opt'].update(batch_size=200, train_epochs=float(epochs))
    hyp['net']['widths'] = {'block1': 16, 'block2': 32, 'block3': 32}
    if 'proxy' in hyp:
        hyp['opt']['batch_size_masked'] = 100
        hyp['proxy']['widths'] = {'block1': 8, 'block2': 16, 'block3': 16}
    return hyp


@pytest.mark.parametrize('name', SCRIPTS)
def test_train_returns_the_trained_model_whose_evaluation_is_the_runs(name, data):
    m = load_script(name)
    hyp, dev = tiny(m), m.Device('cpu')
    train_loader, test_loader = m.make_loaders(hyp, dev, data)
    seen = []
    model, record = m.train(hyp, dev, train_loader, test_loader, seed=3, verbose=False,
                            callback=lambda model, epoch: seen.append((model, epoch)))
    assert isinstance(model, torch.nn.Module) and record['steps'] == 20 and record['seed'] == 3
    assert m.evaluate(model, test_loader, hyp['net']['tta_level']) == pytest.approx(record['tta_val_acc'], abs=0.004)
    assert record['tta_val_acc'] > 0.3  # it learned (chance is 0.1)
    assert [e for _, e in seen] == record['epochs'] and all(mm is model for mm, _ in seen)


def test_train_without_a_test_loader_or_a_seed(ab94, data, capsys):
    hyp, dev = tiny(ab94), ab94.Device('cpu')
    train_loader, test_loader = ab94.make_loaders(hyp, dev, data)
    model, record = ab94.train(hyp, dev, train_loader)
    assert record['tta_val_acc'] is None and record['val_acc'] is None and record['seed'] is None
    assert [e['val_acc'] for e in record['epochs']] == [None, None]
    assert sum(line.startswith('|') for line in capsys.readouterr().out.splitlines()) == 3  # verbose by default: 2 epochs, eval
    assert 0.3 < ab94.evaluate(model, test_loader) <= 1


def test_a_seed_repeats_the_run_and_a_loader_can_be_trained_on_again(ab94, data):
    hyp, dev = tiny(ab94), ab94.Device('cpu')
    loaders = ab94.make_loaders(hyp, dev, data)
    first = ab94.train(hyp, dev, *loaders, seed=5, verbose=False)[1]
    again = ab94.train(hyp, dev, *loaders, seed=5, verbose=False)[1]  # the same loaders, from their epoch 0
    assert again['epochs'] == first['epochs'] and again['tta_val_acc'] == first['tta_val_acc']


def test_a_model_of_ones_own(ab94, data):
    hyp, dev = tiny(ab94), ab94.Device('cpu')
    torch.manual_seed(0)
    mine = ab94.make_net(hyp)
    model, record = ab94.train(hyp, dev, *ab94.make_loaders(hyp, dev, data), verbose=False, model=mine)
    assert model is mine and record['tta_val_acc'] > 0.3


def test_a_loader_is_subset_before_its_first_epoch_and_not_after(ab94, data):
    dev = ab94.Device('cpu')
    loader = ab94.CifarLoader(data['train'], dev, batch_size=200, train=True, aug=ab94.hyp['aug'])
    assert len(loader) == 10 and loader.images.shape == (2000, 3, 32, 32)
    assert 0 <= float(loader.images.min()) and float(loader.images.max()) <= 1  # not yet normalised
    keep = loader.labels < 6
    loader.images, loader.labels = loader.images[keep], loader.labels[keep]
    assert len(loader) == int(keep.sum()) // 200 and len(list(loader)) == len(loader)
    assert all(set(labels.tolist()) <= set(range(6)) for _, labels in loader)
    with pytest.raises(ValueError, match='only before its first epoch'):
        loader.images = loader.images[:100]
    with pytest.raises(ValueError, match='only before its first epoch'):
        loader.labels = loader.labels[:100]
    test = ab94.CifarLoader(data['test'], dev, batch_size=200, train=False)
    assert len(test) == 3 and sum(len(x) for x, _ in test) == 500  # keeps its last partial batch
