"""Differentiable Siamese Augmentation (DSA), as used by MTT and MCT.

Strategy ``color_crop_cutout_flip_scale_rotate`` in mode "S" of the reference DSA
code (Zhao & Bilen, 2021; copied into MTT's ``utils.py``): every call picks ONE
family uniformly at random and applies it with parameters drawn independently
for each sample of the batch (docs/method.md section 5).

Images are float32 NHWC batches ``[B, H, W, C]`` that are already standardised
or ZCA-whitened, so every "fill" below is 0.0 (the dataset mean after
standardisation, exactly what the torch code pads with).

Every function here is a pure function of ``(key, x)``: the same key gives the
same augmentation, which is what makes the augmentation "Siamese" (two batches
of equal size augmented with one key get identical per-index parameters). All
families are affine in ``x``, so ``jax.grad`` with respect to the images is
cheap and exact; the random parameters are never differentiated.

``p`` (a :class:`DSAParams`) is static configuration: the crop and cutout
sizes become array shapes, so pass it by closure or through
``jax.jit(..., static_argnames=('p', 'families'))``, never as a traced
argument.

Sign conventions of scale and rotate follow torch's
``F.affine_grid(theta, align_corners=True)`` + ``F.grid_sample(...,
align_corners=True, padding_mode='zeros')``. dm-pix's ``affine_transform`` is
NOT used for them: its ``mode='constant'`` returns ``cval`` for any sample
point outside ``[0, size - 1]`` as a whole, while torch's zero padding treats
each of the four bilinear taps separately (a point at ``-0.5`` pixel gives half
of the border pixel in torch and 0 in dm-pix). It would also interpolate over
the channel axis (8 taps instead of 4). :func:`_grid_sample` below implements
torch's rule directly: four gathers over the flattened batch, with a
hand-written scatter-add backward (see :func:`_weighted_gather`), which makes
scale and rotate reverse-mode only with respect to ``x``.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence, Tuple

import dm_pix as pix
import jax
import jax.numpy as jnp

FAMILIES = ('color', 'crop', 'cutout', 'flip', 'scale', 'rotate')


class DSAParams(NamedTuple):
    """Strengths of the DSA families; defaults are the reference ``ParamDiffAug``.

    All fields are Python floats (static configuration, hashable).
    """

    brightness: float = 1.0  # x + (u - 0.5) * brightness, u ~ U[0, 1) per sample.
    saturation: float = 2.0  # (x - mean_c x) * (u * saturation) + mean_c x.
    contrast: float = 0.5  # (x - mean_chw x) * (u + contrast) + mean_chw x.
    crop: float = 0.125  # Integer shift per axis in [-round(crop*H), round(crop*H)].
    cutout: float = 0.5  # Side of the zeroed square: round(cutout * H).
    scale: float = 1.2  # Per-axis factor in [1/scale, scale].
    rotate: float = 15.0  # Degrees in [-rotate, rotate].
    flip: float = 0.5  # Probability of a left-right flip.


def _round_half_up(v: float) -> int:
    """``int(v + 0.5)`` as in the torch code (Python's ``round`` rounds half to even)."""
    return int(math.floor(v + 0.5))


def _uniform(key: jax.Array, batch: int) -> jax.Array:
    """``[batch]`` float32 draws from U[0, 1), the analogue of ``torch.rand``."""
    return jax.random.uniform(key, (batch,), jnp.float32)


def _per_sample(v: jax.Array, x: jax.Array) -> jax.Array:
    """Reshapes a ``[B]`` parameter to ``[B, 1, 1, 1]`` in ``x``'s dtype."""
    return v.astype(x.dtype).reshape(-1, 1, 1, 1)


# ----------------------------------------------------------------------------
# Per-sample parameter draws (private, but tests check their distributions).
# ----------------------------------------------------------------------------


def _color_draws(
    key: jax.Array, batch: int, p: DSAParams = DSAParams()
) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """Draws the three colour parameters of :func:`color`.

    Args:
      key: PRNG key.
      batch: B.
      p: strengths.

    Returns:
      ``(shift, saturation_factor, contrast_factor)``, each ``[B]`` float32:
      ``shift = (u1 - 0.5) * p.brightness`` in ``[-0.5, 0.5)``,
      ``saturation_factor = u2 * p.saturation`` in ``[0, 2)`` and
      ``contrast_factor = u3 + p.contrast`` in ``[0.5, 1.5)`` for the defaults.
    """
    kb, ks, kc = jax.random.split(key, 3)
    shift = (_uniform(kb, batch) - 0.5) * p.brightness
    sat = _uniform(ks, batch) * p.saturation
    con = _uniform(kc, batch) + p.contrast
    return shift, sat, con


def _crop_max_shift(h: int, w: int, p: DSAParams = DSAParams()) -> Tuple[int, int]:
    """Largest shift per axis, ``(round(crop*H), round(crop*W))``; 4 for 32x32."""
    return _round_half_up(h * p.crop), _round_half_up(w * p.crop)


def _crop_shifts(
    key: jax.Array, batch: int, h: int, w: int, p: DSAParams = DSAParams()
) -> Tuple[jax.Array, jax.Array]:
    """Draws the integer translations of :func:`crop`.

    Returns:
      ``(shift_y, shift_x)``, each ``[B]`` int32, uniform on the inclusive ranges
      ``[-round(crop*H), round(crop*H)]`` and ``[-round(crop*W), round(crop*W)]``.
    """
    my, mx = _crop_max_shift(h, w, p)
    ky, kx = jax.random.split(key)
    shift_y = jax.random.randint(ky, (batch,), -my, my + 1, jnp.int32)
    shift_x = jax.random.randint(kx, (batch,), -mx, mx + 1, jnp.int32)
    return shift_y, shift_x


def _cutout_size(h: int, w: int, p: DSAParams = DSAParams()) -> Tuple[int, int]:
    """Side of the cutout square per axis, ``(round(cutout*H), round(cutout*W))``."""
    return _round_half_up(h * p.cutout), _round_half_up(w * p.cutout)


def _cutout_centres(
    key: jax.Array, batch: int, h: int, w: int, p: DSAParams = DSAParams()
) -> Tuple[jax.Array, jax.Array]:
    """Draws the cutout centres ("offsets" in the torch code).

    Returns:
      ``(centre_y, centre_x)``, each ``[B]`` int32, uniform on the inclusive
      ranges ``[0, H - (s_h % 2)]`` and ``[0, W - (s_w % 2)]`` (``[0, 32]`` for
      32x32 images and side 16). The zeroed rows are
      ``[centre_y - s_h // 2, centre_y - s_h // 2 + s_h)`` clipped to the image,
      and likewise for columns, so the square may hang over any border.
    """
    sh, sw = _cutout_size(h, w, p)
    ky, kx = jax.random.split(key)
    cy = jax.random.randint(ky, (batch,), 0, h + 1 - sh % 2, jnp.int32)
    cx = jax.random.randint(kx, (batch,), 0, w + 1 - sw % 2, jnp.int32)
    return cy, cx


def _flip_mask(key: jax.Array, batch: int, p: DSAParams = DSAParams()) -> jax.Array:
    """``[B]`` bool, True where the sample is flipped (``u < p.flip``)."""
    return _uniform(key, batch) < p.flip


def _scale_factors(
    key: jax.Array, batch: int, p: DSAParams = DSAParams()
) -> Tuple[jax.Array, jax.Array]:
    """Draws ``(sx, sy)``, each ``[B]``, independent and uniform on ``[1/s, s)``.

    ``sx`` scales the normalised width coordinate and ``sy`` the height one, as
    in ``theta = [[sx, 0, 0], [0, sy, 0]]``; ``s > 1`` samples a wider input
    region, so the content shrinks.
    """
    kx, ky = jax.random.split(key)
    lo = 1.0 / p.scale
    sx = _uniform(kx, batch) * (p.scale - lo) + lo
    sy = _uniform(ky, batch) * (p.scale - lo) + lo
    return sx, sy


def _rotate_angles(key: jax.Array, batch: int, p: DSAParams = DSAParams()) -> jax.Array:
    """``[B]`` angles in radians, uniform on ``[-p.rotate, p.rotate)`` degrees."""
    return (_uniform(key, batch) - 0.5) * 2.0 * p.rotate / 180.0 * math.pi


def _scale_theta(sx: jax.Array, sy: jax.Array) -> jax.Array:
    """``[B, 2, 3]`` affine matrices ``[[sx, 0, 0], [0, sy, 0]]``."""
    zero = jnp.zeros_like(sx)
    return jnp.stack([jnp.stack([sx, zero, zero], -1), jnp.stack([zero, sy, zero], -1)], -2)


def _rotate_theta(angle: jax.Array) -> jax.Array:
    """``[B, 2, 3]`` affine matrices ``[[cos a, -sin a, 0], [sin a, cos a, 0]]``.

    This is the matrix of the reference ``rand_rotate`` (``torch.sin(-theta)`` in
    the first row). With the y axis pointing down, a positive angle turns the
    content anticlockwise on screen (``a = 90`` degrees gives ``np.rot90``). The
    opposite sign convention would give the same distribution, since the angle is
    symmetric about 0.
    """
    c, s = jnp.cos(angle), jnp.sin(angle)
    zero = jnp.zeros_like(angle)
    return jnp.stack([jnp.stack([c, -s, zero], -1), jnp.stack([s, c, zero], -1)], -2)


def _choose_family(key: jax.Array, n_families: int) -> Tuple[jax.Array, jax.Array]:
    """Splits ``key`` into the family index of :func:`dsa` and the family's key.

    Returns:
      ``(index, family_key)``: a scalar int32 uniform on ``[0, n_families)`` and
      the key that :func:`dsa` passes to the chosen family.
    """
    k_choose, k_family = jax.random.split(key)
    index = jax.random.randint(k_choose, (), 0, n_families, jnp.int32)
    return index, k_family


# ----------------------------------------------------------------------------
# Resampling.
# ----------------------------------------------------------------------------


@jax.custom_vjp
def _weighted_gather(
    x: jax.Array, idx: Tuple[jax.Array, ...], wt: Tuple[jax.Array, ...]
) -> jax.Array:
    """``out[q] = sum_t wt[t][q] * x_flat[idx[t][q]]`` with ``q = (b, i, j)`` flat.

    Args:
      x: ``[B, H, W, C]`` images.
      idx: T arrays ``[B*H*W]`` int32, rows of ``x.reshape(B*H*W, C)``, all in
        bounds.
      wt: T arrays ``[B*H*W]``, the weights of the taps.

    Returns:
      ``[B, H, W, C]``.

    The backward pass is written by hand (a chain of T in-place scatter-adds
    into one buffer) because the transpose JAX derives for the gathers is several
    times slower on XLA:CPU (docs/benchmarks.md); this runs in every differentiated
    distillation step. Consequence: only reverse mode is
    defined with respect to ``x`` (``jax.grad``/``vjp``/``jacrev``, also nested);
    ``jax.jvp``/``jacfwd`` through ``x`` raise. ``idx`` and ``wt`` depend only on
    the PRNG key and get no gradient.
    """
    c = x.shape[-1]
    flat = x.reshape(-1, c)
    out = sum(flat.at[i].get(mode='promise_in_bounds') * v[:, None] for i, v in zip(idx, wt))
    return out.reshape(x.shape)


def _weighted_gather_fwd(x, idx, wt):
    return _weighted_gather(x, idx, wt), (idx, wt)


def _weighted_gather_bwd(res, ct):
    idx, wt = res
    c = ct.shape[-1]
    ct_flat = ct.reshape(-1, c)
    g = jnp.zeros_like(ct_flat)
    for i, v in zip(idx, wt):
        g = g.at[i].add(ct_flat * v[:, None], mode='promise_in_bounds')
    return g.reshape(ct.shape), None, None


_weighted_gather.defvjp(_weighted_gather_fwd, _weighted_gather_bwd)


def _bilinear_taps(
    theta: jax.Array, b: int, h: int, w: int
) -> Tuple[Tuple[jax.Array, ...], Tuple[jax.Array, ...]]:
    """Taps of torch ``grid_sample(x, affine_grid(theta))``, ``align_corners=True``.

    Output pixel (i, j) has normalised coordinates ``u = 2j/(W-1) - 1`` (width)
    and ``v = 2i/(H-1) - 1`` (height); it reads the input at
    ``theta @ [u, v, 1]`` (again normalised, x then y) by bilinear interpolation,
    where each of the four taps outside the image contributes 0
    (``padding_mode='zeros'``). The map is therefore about the image centre.

    Args:
      theta: ``[B, 2, 3]`` affine matrices from output to input coordinates.
      b, h, w: batch size and image size (H, W >= 2).

    Returns:
      ``(idx, wt)``, each a tuple of four ``[B*H*W]`` arrays: flat row indices
      into ``x.reshape(B*H*W, C)`` and bilinear weights (0 for outside taps).
    """
    if h < 2 or w < 2:
        raise ValueError(f'need H, W >= 2 for align_corners=True, got {(h, w)}')
    t = theta.astype(jnp.float32)[:, :, :, None, None]  # [B, 2, 3, 1, 1]
    # Same map as torch's, ix = (theta[0] @ [u, v, 1] + 1) * (W - 1) / 2 and
    # likewise iy, but written about the centre (cx, cy) in pixel units: the
    # offsets j - cx are exact in float32, so the identity and integer
    # translations land exactly on pixels instead of 1e-6 off.
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    dj = (jnp.arange(w, dtype=jnp.float32) - cx)[None, None, :]  # [1, 1, W]
    di = (jnp.arange(h, dtype=jnp.float32) - cy)[None, :, None]  # [1, H, 1]
    ix = cx + t[:, 0, 0] * dj + t[:, 0, 1] * (cx / cy) * di + t[:, 0, 2] * cx
    iy = cy + t[:, 1, 0] * (cy / cx) * dj + t[:, 1, 1] * di + t[:, 1, 2] * cy
    x0 = jnp.floor(ix)
    y0 = jnp.floor(iy)
    fx = ix - x0
    fy = iy - y0
    x0 = x0.astype(jnp.int32)
    y0 = y0.astype(jnp.int32)
    base = (jnp.arange(b, dtype=jnp.int32) * (h * w))[:, None, None]  # [B, 1, 1]
    idx, wt = [], []
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yy, xx = y0 + dy, x0 + dx
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            # Per-tap zero padding: an outside tap keeps a clipped (valid) index
            # but weight 0, so the gather never reads out of bounds.
            idx.append(base + jnp.clip(yy, 0, h - 1) * w + jnp.clip(xx, 0, w - 1))
            wt.append(jnp.where(inside, wy * wx, 0.0))
    # Kept as separate arrays: stacking them into one [4, B*H*W] array and
    # slicing it back doubled the backward time on XLA:CPU.
    return (tuple(i.reshape(-1) for i in idx), tuple(v.reshape(-1) for v in wt))


def _grid_sample(x: jax.Array, theta: jax.Array) -> jax.Array:
    """torch ``grid_sample(x, affine_grid(theta))``, ``align_corners=True``, zeros.

    See :func:`_bilinear_taps` for the convention.

    Args:
      x: ``[B, H, W, C]`` images.
      theta: ``[B, 2, 3]`` affine matrices from output to input coordinates.

    Returns:
      ``[B, H, W, C]`` resampled images, linear in ``x``.
    """
    b, h, w, _ = x.shape
    idx, wt = _bilinear_taps(theta, b, h, w)
    return _weighted_gather(x, idx, tuple(v.astype(x.dtype) for v in wt))


# ----------------------------------------------------------------------------
# The six families. Each maps (key, [B, H, W, C]) -> [B, H, W, C].
# ----------------------------------------------------------------------------


def color(key: jax.Array, x: jax.Array, p: DSAParams = DSAParams()) -> jax.Array:
    """Brightness, then saturation, then contrast, each with its own draw.

    With ``(b, s, k) = _color_draws(key, B, p)`` per sample:
    ``x1 = x + b``; ``x2 = (x1 - m_c(x1)) * s + m_c(x1)`` with ``m_c`` the mean
    over channels of each pixel; ``x3 = (x2 - m(x2)) * k + m(x2)`` with ``m`` the
    mean over H, W and C of each sample. (dm-pix's saturation works in HSV and
    its contrast uses per-channel means, so only its brightness is reused.)

    Args:
      key: PRNG key.
      x: ``[B, H, W, C]`` images.
      p: strengths.

    Returns:
      ``[B, H, W, C]`` augmented images.
    """
    shift, sat, con = _color_draws(key, x.shape[0], p)
    x = pix.adjust_brightness(x, _per_sample(shift, x))
    m = jnp.mean(x, axis=-1, keepdims=True)
    x = (x - m) * _per_sample(sat, x) + m
    m = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    return (x - m) * _per_sample(con, x) + m


def crop(key: jax.Array, x: jax.Array, p: DSAParams = DSAParams()) -> jax.Array:
    """Translates each sample by an integer shift, filling with zeros.

    Output pixel (i, j) is input pixel ``(i + shift_y, j + shift_x)``, or 0 when
    that is outside the image, with shifts from :func:`_crop_shifts` (the
    reference's pad-by-one-and-clamp indexing amounts to the same thing).

    Args:
      key: PRNG key.
      x: ``[B, H, W, C]`` images.
      p: strengths.

    Returns:
      ``[B, H, W, C]`` shifted images.
    """
    b, h, w, c = x.shape
    my, mx = _crop_max_shift(h, w, p)
    sy, sx = _crop_shifts(key, b, h, w, p)
    # Zero-pad by the largest shift so that every window is a plain slice.
    xp = jnp.pad(x, ((0, 0), (my, my), (mx, mx), (0, 0)))

    def window(img, dy, dx):
        # Same integer dtype for every start index (also under jax_enable_x64).
        return jax.lax.dynamic_slice(img, (my + dy, mx + dx, jnp.zeros_like(dy)), (h, w, c))

    return jax.vmap(window)(xp, sy, sx)


def cutout(key: jax.Array, x: jax.Array, p: DSAParams = DSAParams()) -> jax.Array:
    """Zeroes a square of side ``round(p.cutout * H)`` per sample, clipped at borders.

    Args:
      key: PRNG key.
      x: ``[B, H, W, C]`` images.
      p: strengths.

    Returns:
      ``[B, H, W, C]`` images with the square (from :func:`_cutout_centres`) set
      to 0.
    """
    b, h, w, _ = x.shape
    sh, sw = _cutout_size(h, w, p)
    cy, cx = _cutout_centres(key, b, h, w, p)
    top = (cy - sh // 2)[:, None]
    left = (cx - sw // 2)[:, None]
    rows = jnp.arange(h)[None, :]
    cols = jnp.arange(w)[None, :]
    in_rows = (rows >= top) & (rows < top + sh)  # [B, H]
    in_cols = (cols >= left) & (cols < left + sw)  # [B, W]
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])  # [B, H, W]
    return x * keep[..., None].astype(x.dtype)


def flip(key: jax.Array, x: jax.Array, p: DSAParams = DSAParams()) -> jax.Array:
    """Flips each sample left-right with probability ``p.flip``.

    Args:
      key: PRNG key.
      x: ``[B, H, W, C]`` images.
      p: strengths.

    Returns:
      ``[B, H, W, C]`` images, flipped where :func:`_flip_mask` is True.
    """
    mask = _flip_mask(key, x.shape[0], p)
    return jnp.where(mask[:, None, None, None], pix.flip_left_right(x), x)


def scale(key: jax.Array, x: jax.Array, p: DSAParams = DSAParams()) -> jax.Array:
    """Rescales each sample about its centre, bilinear with zero padding.

    ``theta = [[sx, 0, 0], [0, sy, 0]]`` with ``(sx, sy)`` from
    :func:`_scale_factors`, resampled by :func:`_grid_sample`.

    Args:
      key: PRNG key.
      x: ``[B, H, W, C]`` images.
      p: strengths.

    Returns:
      ``[B, H, W, C]`` rescaled images.
    """
    sx, sy = _scale_factors(key, x.shape[0], p)
    return _grid_sample(x, _scale_theta(sx, sy))


def rotate(key: jax.Array, x: jax.Array, p: DSAParams = DSAParams()) -> jax.Array:
    """Rotates each sample about its centre, bilinear with zero padding.

    ``theta = [[cos a, -sin a, 0], [sin a, cos a, 0]]`` with ``a`` from
    :func:`_rotate_angles`, resampled by :func:`_grid_sample`.

    Args:
      key: PRNG key.
      x: ``[B, H, W, C]`` images.
      p: strengths.

    Returns:
      ``[B, H, W, C]`` rotated images.
    """
    return _grid_sample(x, _rotate_theta(_rotate_angles(key, x.shape[0], p)))


_FAMILY_FNS: dict[str, Callable[..., jax.Array]] = {
    'color': color,
    'crop': crop,
    'cutout': cutout,
    'flip': flip,
    'scale': scale,
    'rotate': rotate,
}


def dsa(
    key: jax.Array,
    x: jax.Array,
    p: DSAParams = DSAParams(),
    families: Sequence[str] = FAMILIES,
) -> jax.Array:
    """DSA mode "S": one family chosen uniformly per call, per-sample parameters.

    The choice is a traced index fed to ``lax.switch``, so this works under
    ``jit``, ``vmap`` (over keys), ``lax.scan`` and ``grad``. With
    ``(i, k) = _choose_family(key, len(families))`` the result is exactly
    ``FAMILY(families[i])(k, x, p)``. Differentiable in reverse mode only with
    respect to ``x`` (all branches are traced, and scale/rotate have a
    hand-written backward, see :func:`_weighted_gather`). Under ``vmap`` over
    keys the index is batched and ``lax.switch`` becomes a select, so all six
    families are computed; vmap over images with one key keeps a single branch.

    Args:
      key: PRNG key.
      x: ``[B, H, W, C]`` images.
      p: strengths (static).
      families: names from :data:`FAMILIES` to choose among (static).

    Returns:
      ``[B, H, W, C]`` augmented images.
    """
    families = tuple(families)
    unknown = [f for f in families if f not in _FAMILY_FNS]
    if not families or unknown:
        raise ValueError(f'families must be a non-empty subset of {FAMILIES}, got {families}')
    index, k_family = _choose_family(key, len(families))
    branches = [lambda k, y, f=_FAMILY_FNS[name]: f(k, y, p) for name in families]
    return jax.lax.switch(index, branches, k_family, x)
