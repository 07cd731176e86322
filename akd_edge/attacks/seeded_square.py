"""The official Square attack (pyautoattack's ``SquareAttack``) with random numbers of its own.

``SquareAttack`` draws its random numbers from torch's global generator, which its ``perturb`` seeds: two attacks
on two threads would draw from one stream, and an attack would reseed the generator under any other code
running beside it. :func:`square_class` draws the same numbers from a generator of each attack's own, and
:func:`perturb` seeds it where ``perturb`` seeds the global one: the examples are ``SquareAttack.perturb``'s, bit
for bit (tests/test_verify_speed.py compares them), and torch's global generator is never read or reseeded.
"""

from __future__ import annotations

import functools
from typing import Any

import torch


@functools.cache
def square_class() -> type:
    """``SquareAttack`` whose ``random_choice``, ``random_int`` and (L2) ``eta``, through which it draws every
    random number, draw the same numbers in the same order from ``self.generator`` (a fresh generator given a
    seed yields the global one's sequence for that seed)."""
    from pyautoattack.square import SquareAttack

    class OwnGeneratorSquare(SquareAttack):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.generator = torch.Generator()

        def random_choice(self, shape: Any) -> torch.Tensor:
            return torch.sign(2 * torch.rand(shape, generator=self.generator).to(self.device) - 1)

        def random_int(self, low: int = 0, high: int = 1, shape: Any = (1,)) -> torch.Tensor:
            return (low + (high - low) * torch.rand(shape, generator=self.generator).to(self.device)).long()

        def eta(self, s: int) -> torch.Tensor:  # SquareAttack.eta for L2 (the only norm that calls it)
            delta = torch.zeros([s, s]).to(self.device)
            delta[: s // 2] = self.eta_rectangles(s // 2, s)
            delta[s // 2 :] = -1.0 * self.eta_rectangles(s - s // 2, s)
            delta /= (delta**2).sum(dim=(0, 1), keepdim=True).sqrt()
            if torch.rand([1], generator=self.generator) > 0.5:
                delta = delta.permute([1, 0])
            return delta

    return OwnGeneratorSquare


def perturb(attack: Any, x: torch.Tensor, y: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """``SquareAttack.perturb(x, y)``, untargeted, with the clean flags ``correct`` it would compute first, and
    the attack's own generator seeded where ``perturb`` seeds torch's global one (its restarts and bookkeeping
    as they are in pyautoattack)."""
    attack.init_hyperparam(x)
    adv, acc = x.clone(), correct.clone()
    attack.generator = torch.Generator().manual_seed(int(attack.seed))
    for _ in range(attack.n_restarts):
        ind_to_fool = acc.nonzero().flatten()
        if ind_to_fool.numel() == 0:
            continue
        y_to_fool = y[ind_to_fool].clone()
        _, adv_curr = attack.attack_single_run(x[ind_to_fool].clone(), y_to_fool)
        fooled = (attack.predict(adv_curr).max(1)[1] != y_to_fool).nonzero().flatten()
        acc[ind_to_fool[fooled]] = False
        adv[ind_to_fool[fooled]] = adv_curr[fooled].clone()
    return adv
