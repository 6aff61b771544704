"""Interrupts held until a finished chunk is safe: ComfyUI raises its interrupt from inside progress
updates and VAE decodes, where it would throw away a chunk that is already complete."""
from __future__ import annotations


class DeferredInterrupt:
    """ComfyUI raises its interrupt from inside progress updates (and VAE decodes with a progress bar).
    Raised during a chunk's last step or its decode it would throw a finished chunk away, so it is held
    here and raised at the next safe point: before a denoising step, or right after the chunk is saved."""

    def __init__(self, host):
        self.host, self.pending = host, None

    def guard(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            if not self.host.is_interrupt(exc):
                raise
            self.pending = exc

    def raise_pending(self) -> None:
        if self.pending is not None:
            exc, self.pending = self.pending, None
            raise exc


class FinishingVAE:
    """The VAE for one run: a decode hit by an interrupt is repeated (the chunk is complete by then);
    the interrupt is raised after the chunk is committed."""

    def __init__(self, vae, deferred: DeferredInterrupt):
        self.vae, self.deferred = vae, deferred

    def encode(self, pixels):
        return self.vae.encode(pixels)

    def decode(self, latents):
        for _ in range(3):
            try:
                return self.vae.decode(latents)
            except BaseException as exc:
                if not self.deferred.host.is_interrupt(exc):
                    raise
                self.deferred.pending = exc
        return self.vae.decode(latents)
