"""The loader's sampler (paper Table 1: reshuffling or sampling with replacement) and augmentation
changed between epochs (read at the start of every epoch; the epoch-0 preparation redone only when
a change needs it). airbench94's loader block, which every script of the family carries verbatim."""
import pytest
import torch

from conftest import random_split


def loader(ab94, cpu, n=200, batch=50, seed=0, **kwargs):
    torch.manual_seed(seed)
    return ab94.CifarLoader(random_split(n, seed), cpu, batch, **kwargs)


def test_the_default_sampler_draws_what_it_drew_before(ab94, cpu):
    """A permutation from torch's RNG, right after the augmentation's draws: the same as before the
    sampler existed, so every script's runs are unchanged."""
    l = loader(ab94, cpu, aug={'flip': 'alternating', 'translate': 2})
    torch.manual_seed(5)
    _, _, order = l.next_epoch()
    torch.manual_seed(5)
    torch.rand(len(l.images))  # the pre-flip's draw
    torch.randint(-2, 3, size=(len(l.images), 2))  # the crop's draw
    assert torch.equal(order, torch.randperm(len(l.images)))


def test_sampling_with_replacement_draws_iid_indices_for_the_same_number_of_batches(ab94, cpu):
    l = loader(ab94, cpu, n=1000, batch=100, sampling='replacement')
    assert len(l) == 10
    torch.manual_seed(3)
    _, _, order = l.next_epoch()
    torch.manual_seed(3)
    assert torch.equal(order, torch.randint(1000, (1000,)))
    distinct = len(set(order.tolist())) / 1000
    assert 0.58 < distinct < 0.68  # 1 - 1/e of the images, about: not a permutation, not a fixed order
    served = torch.cat([labels for _, labels in l])
    assert len(served) == 1000


def test_alternating_flip_is_per_image_and_epoch_parity_under_both_samplers(ab94, cpu):
    for sampling in ('reshuffle', 'replacement'):
        l = loader(ab94, cpu, n=64, batch=64, aug={'flip': 'alternating'}, sampling=sampling)
        plain = l.normalize(l.images)
        first = None
        for epoch in range(4):
            images, _, order = l.next_epoch()
            mirrored = torch.tensor([torch.equal(images[i], plain[i].flip(-1)) for i in range(64)])
            assert all(torch.equal(images[i], plain[i]) or mirrored[i] for i in range(64))
            if first is None:
                first = mirrored
                assert 0 < first.sum() < 64
            assert torch.equal(mirrored, first ^ (epoch % 2 == 1)), (sampling, epoch)


def test_a_bad_sampler_is_one_sentence(ab94, cpu):
    with pytest.raises(ab94.UserError, match="loader.sampling='sorted'"):
        loader(ab94, cpu, sampling='sorted')


def test_translate_changed_after_the_first_epoch_takes_effect_at_the_next(ab94, cpu):
    l = loader(ab94, cpu, aug={'flip': 'none', 'translate': 2})
    padded, _, _ = l.next_epoch()
    assert padded.shape[-1] == 32
    l.aug['translate'] = 0  # off: the prepared images themselves, never the 36 x 36 padded ones
    images, _, _ = l.next_epoch()
    assert images.shape[-1] == 32 and torch.equal(images, l.normalize(l.images))
    l.aug['translate'] = 4  # on again, wider: crops of the images reflect-padded by 4
    images, _, _ = l.next_epoch()
    assert l.base.shape[-1] == 40 and images.shape[-1] == 32
    assert not torch.equal(images, l.normalize(l.images))


def test_alternating_flip_turned_on_later_mirrors_a_random_half_from_then_on(ab94, cpu):
    l = loader(ab94, cpu, n=100, aug={'flip': 'none'})
    plain = l.normalize(l.images)
    assert torch.equal(l.next_epoch()[0], plain)
    l.aug = {'flip': True}
    l.altflip = True  # the original package's form of 'alternating'
    images, _, _ = l.next_epoch()  # epoch 1: odd, every image mirrored relative to the pre-flip
    mirrored = torch.tensor([torch.equal(images[i], plain[i].flip(-1)) for i in range(100)])
    assert 20 < mirrored.sum() < 80
    l.aug['flip'] = False
    assert torch.equal(l.next_epoch()[0], plain)


@pytest.mark.parametrize('aug, fragment', [({'flip': 'sometimes'}, "loader.aug['flip']='sometimes'"),
                                           ({'translate': 9}, "loader.aug['translate']=9"),
                                           ({'cutout': 2.5}, "loader.aug['cutout']=2.5"),
                                           ({'blur': 1}, "loader.aug['blur']=1")])
def test_a_bad_augmentation_is_refused_at_the_epoch_that_would_use_it(ab94, cpu, aug, fragment):
    l = loader(ab94, cpu, aug={'flip': 'random'})
    l.next_epoch()
    l.aug.update(aug)
    with pytest.raises(ab94.UserError, match=fragment.replace('[', r'\[').replace(']', r'\]')):
        l.next_epoch()
    with pytest.raises(ab94.UserError, match='not a dict'):
        l.aug = 'flip'
