"""Adversarial examples (Question 4, section "attack your model").

A network that classifies Fashion-MNIST well can be fooled by changing every pixel by at
most ``eps`` (an L-infinity ball): projected gradient descent (PGD, Madry et al., 2018)
climbs the loss in small signed-gradient steps and projects back into the ball after each.
Training on such images instead of the clean ones (adversarial training) makes a model
that keeps much of its accuracy under the same attack.

* ``pgd_attack(model, images, labels, eps, alpha, steps)``: the attack, YOUR exercise (FGSM
  is ``steps=1, alpha=eps, random_start=False``). Adversarial training (a preset's
  ``adversarial:`` key in demo_scratch.py) and the command line below use it.
* The command line, on a finished Question 4 run::

      python adversarial.py --run runs/cnn_fmnist_cpu --eps 0.1 --alpha 0.01 --steps 20
      python adversarial.py --run runs/cnn_fmnist_cpu --sweep 0,0.02,0.05,0.1,0.2 --limit 2000
      python adversarial.py --run runs/cnn_fmnist_cpu --target least_likely   # CS771's target

  It prints clean and robust accuracy on the run's test set and writes, into the run
  folder, ``adversarial.json`` (settings and accuracies), ``adversarial_examples.png``
  (clean image, perturbation magnified, adversarial image, both predictions) and, with
  ``--sweep``, ``adversarial_sweep.png`` (accuracy against eps). The clean and attacked
  images of every batch also go to TensorBoard (``tensorboard --logdir RUN/tensorboard``:
  tabs ``Org_Image`` and ``Adv_Image``, one step per batch).

Every model here takes FLOAT images in [0, 1] of shape (B, C, H, W) and normalises them
itself, so that ``eps`` is measured in pixel units (eps 0.1 = about 25 grey levels of 255).
The machinery around the attack (adversarial training batches, robust accuracy, the
pictures) is in ``kit/attack.py``.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from kit.attack import check_attack_args, parse_sweep, round_into_ball, run_attack
from kit.stopping import run_main


def pgd_attack(model, images, labels, eps, alpha, steps, random_start=True, targeted=False):
    """L-infinity projected gradient descent (PGD) in pixel space (Madry et al., 2018).

    Inputs:
    - model: nn.Module mapping images (B, C, H, W) in [0, 1] to logits (B, K). It is used
      as it is (keep it in eval mode) and its parameters get no gradients.
    - images: (B, C, H, W) float32 or bfloat16 clean images in [0, 1].
    - labels: (B,) int64. Untargeted: the true classes, whose loss the attack increases.
      Targeted: the classes to move towards, whose loss the attack decreases. A label of
      -1 means "unknown": that image is not attacked (except the random start).
    - eps: radius of the L-infinity ball, in [0, 1] (pixel units).
    - alpha: step size of each signed-gradient step.
    - steps: number of steps (0 returns the starting point).
    - random_start: start at a uniformly random point of the ball instead of the image.
    - targeted: see labels.

    Returns:
    - adv: (B, C, H, W), the dtype and device of ``images``, no gradient, with
      |adv - images| <= eps everywhere and 0 <= adv <= 1.

    FGSM (Goodfellow et al., 2015) is ``steps=1, alpha=eps, random_start=False``.

    Hint: work on ``adv``, a float32 copy of the images (``x0``). Optionally add uniform noise
    in [-eps, eps] and clip to [0, 1]. Then ``steps`` times: make ``adv`` require a gradient,
    compute the cross-entropy of ``model(adv.to(images.dtype))`` (sum over the batch, with
    ``ignore_index=-1``), take its gradient with respect to ``adv`` only
    (``torch.autograd.grad``), step ``alpha * grad.sign()`` up the loss (down for a targeted
    attack), and project: clip ``adv - x0`` to [-eps, eps], then ``x0 + delta`` to [0, 1].
    Leave the result in ``adv``; the last line rounds it to the images' dtype.
    """
    check_attack_args(images, labels, eps, alpha, steps)
    x0 = images.detach().float()  # float32 even for bf16 images: small steps must not round away
    labels = labels.detach()
    with torch.enable_grad():  # callers often evaluate under torch.no_grad()
        # BEGIN SOLUTION pgd_attack
        adv = x0.clone()
        if random_start:
            adv = (adv + torch.empty_like(adv).uniform_(-eps, eps)).clamp(0.0, 1.0)
        for _ in range(steps):
            adv.requires_grad_(True)
            logits = model(adv.to(images.dtype)).float()
            # Summed, not averaged: each image's gradient then does not shrink with the batch
            # size (in bf16 a tiny averaged gradient could underflow to a zero sign).
            loss = F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum")
            (grad,) = torch.autograd.grad(loss, adv)  # only adv: no .grad on the parameters
            direction = -1.0 if targeted else 1.0
            adv = adv.detach() + direction * alpha * grad.sign()
            delta = (adv - x0).clamp(-eps, eps)
            adv = (x0 + delta).clamp(0.0, 1.0)
        # END SOLUTION
    return round_into_ball(adv.detach(), images.detach(), eps)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Attack the best model of a Question 4 run (demo_scratch.py) with L-inf PGD."
    )
    parser.add_argument("--run", required=True, help="run folder of demo_scratch.py")
    parser.add_argument("--eps", type=float, default=0.1, help="L-inf radius in [0, 1]")
    parser.add_argument("--alpha", type=float, default=0.01, help="step size")
    parser.add_argument("--steps", type=int, default=20, help="PGD steps (1 and alpha=eps: FGSM)")
    parser.add_argument("--targeted", action="store_true", help="aim at class (label + 1) %% K")
    parser.add_argument(
        "--target",
        choices=["next", "least_likely"],
        default=None,
        help="a targeted attack's class: next = (label + 1) %% K; least_likely = the class the "
        "model is least confident in on the clean image (CS771)",
    )
    parser.add_argument("--sweep", default=None, help="eps values for a curve, e.g. 0,0.05,0.1")
    parser.add_argument("--limit", type=int, default=None, help="attack only the first N images")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--data_dir", default=None, help="data folder (default: the run's)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--no_random_start", action="store_true", help="start at the clean image")
    args = parser.parse_args(argv)
    run_main(
        lambda: run_attack(
            args.run,
            pgd_attack,
            eps=args.eps,
            alpha=args.alpha,
            steps=args.steps,
            targeted=args.targeted or args.target is not None,
            target=args.target or "next",
            sweep=parse_sweep(args.sweep),
            limit=args.limit,
            batch_size=args.batch_size,
            data_dir=args.data_dir,
            device=args.device,
            random_start=not args.no_random_start,
        )
    )


if __name__ == "__main__":
    main()
