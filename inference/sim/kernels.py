"""Compiled (numba) loops of the sim renderer: terrain march, ground and sky shading, pixel copy.

The numpy renderer made a dozen passes over (samples x columns) and (rows x
columns) temporaries per frame; these loops touch each sample and cell once,
with one column's samples in L1. The arithmetic is float32 in the order the
numpy code used, so pictures stay within rounding of it. Compiled code is
cached next to this file (numba `cache=True`), so a new process loads it in
milliseconds after the first compile.
"""

from __future__ import annotations

import numpy as np
from numba import njit

F32 = np.float32
TILE = 16  # columns shaded side by side: neighbouring cells read neighbouring texels


@njit(cache=True, nogil=True)
def power(x, exponent):
    """x ** exponent (integer >= 1) by repeated squaring, in the multiplication order of fastmath.power."""
    result = x
    have = False
    base = x
    while exponent:
        if exponent & 1:
            result = result * base if have else base
            have = True
        exponent >>= 1
        if exponent:
            base = base * base
    return result


@njit(cache=True, nogil=True)
def bilinear(tex, size, u, v):
    """Bilinear sample of a periodic (size, size) float32 field flattened to (size*size,)."""
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = u - u0, v - v0
    mask = size - 1
    iu, iv = np.int64(u0) & mask, np.int64(v0) & mask
    iu1 = (iu + 1) & mask
    r0, r1 = iv * size, ((iv + 1) & mask) * size
    top = tex[r0 + iu]
    top += (tex[r0 + iu1] - top) * fu
    bot = tex[r1 + iu]
    bot += (tex[r1 + iu1] - bot) * fu
    return top + (bot - top) * fv


@njit(cache=True, nogil=True)
def march_columns(texels, first, size, u_base, v_base, tc, t, fog_t, eye, water_level, inv_fog_h,
                  sin_az, cos_az, haze, tan_bound, packed, hit, sky_row):
    """Sample, light and haze the terrain along every column; resolve which sample each cell sees.

    texels: (T, 4) height, r, g, b of every mip texel; first, size: (K,) int64 each sample's
    mip level (first texel, texels per side); u_base, v_base, tc: (K,) float32 texel
    coordinates of the eye and texels per unit of sin/cos azimuth at each sample distance t;
    fog_t: (K,) -density * t; sin_az, cos_az: (A,); haze: (3, A); tan_bound: (R,) tan of each
    row's elevation. Writes packed (A, K, 5) = (tan elevation it is seen at, haze fraction,
    hazed r, g, b), hit (A, R) = first sample each cell sees (K where none: sky) and
    sky_row (A,) = the column's first sky row (hits only ever rise with the row).
    """
    n_az, k_count, n_el = sin_az.shape[0], t.shape[0], tan_bound.shape[0]
    eye32, wl = F32(eye), F32(water_level)
    for a in range(n_az):
        sa, ca = sin_az[a], cos_az[a]
        top = -1  # highest row whose ray has met the ground so far
        for k in range(k_count):
            n, mask, base = size[k], size[k] - 1, first[k]
            u = u_base[k] + tc[k] * sa
            v = v_base[k] + tc[k] * ca
            u0, v0 = np.floor(u), np.floor(v)
            fu, fv = u - u0, v - v0
            iu, iv = np.int64(u0) & mask, np.int64(v0) & mask
            iu1 = (iu + 1) & mask
            r0, r1 = base + iv * n, base + ((iv + 1) & mask) * n
            height = F32(0.0)
            fog = F32(1.0)
            for c in range(4):
                ta = texels[r0 + iu, c]
                ta += (texels[r0 + iu1, c] - ta) * fu
                tb = texels[r1 + iu, c]
                tb += (texels[r1 + iu1, c] - tb) * fu
                ta += (tb - ta) * fv
                if c == 0:
                    height = ta
                    # Haze thins with altitude: density at the mean height of the eye and the sample.
                    mean_h = max(F32(0.5) * (ta + eye32) - wl, F32(0.0))
                    if k < k_count - 1:  # the last sample is all haze: the land melts into the horizon
                        fog = F32(1.0) - np.exp(np.exp(mean_h * inv_fog_h) * fog_t[k])
                    packed[a, k, 1] = fog
                else:
                    packed[a, k, 1 + c] = ta + (haze[c - 1, a] - ta) * fog
            s = (height - eye32) / t[k]
            packed[a, k, 0] = s
            while top + 1 < n_el and s >= tan_bound[top + 1]:
                top += 1
                hit[a, top] = k
            if top == n_el - 1:
                break  # every cell of the column sees the ground already: farther samples are hidden
        for r in range(top + 1, n_el):
            hit[a, r] = k_count
        sky_row[a] = top + 1


@njit(cache=True, nogil=True)
def shade_columns(packed, hit, t, tan_el, sky_half, sky_from, detail, detail_m,
                  eye, x_d, z_d, inv_detail, fade_m, sin_az, cos_az,
                  water, row_water, col_water, ripple_bin, haze, words, depth, cos_el):
    """Colour every grid cell (ground from the march, sky from the half-resolution sky) as RGBX words.

    packed, hit: from march_columns; tan_el: (R,) per row; sky_half: (3, r2, a2) sky colours
    of every other row from sky_from and every other column; detail: (m*m,) close-ground
    brightness texture; x_d, z_d: eye in detail texels; water: (water level + 0.15, sin sun
    elevation, sun_strength, sun r, g, b); row_water: (R, 6) sin_down, fresnel, cos_down,
    mirror sky r, g, b; col_water: (A,) cos(sun elevation) * cos(azimuth - sun azimuth);
    ripple_bin: (A,) ripple texel column. Writes words (R, A) uint32 and, if depth has R
    rows, depth (R, A) metres along the ray (inf for sky); cos_el: (R,) max(cos el, 1e-6).
    """
    n_az, n_el = hit.shape
    k_count = t.shape[0]
    eye32, fade32 = F32(eye), F32(fade_m)
    fade_inv = F32(1.0 / fade_m)
    with_depth = depth.shape[0] == n_el
    wl = water[0]
    for a0 in range(0, n_az, TILE):
      for r in range(n_el):
        for a in range(a0, min(a0 + TILE, n_az)):
            k = np.int64(hit[a, r])
            if k >= k_count:
                i, j = (r - sky_from) >> 1, a >> 1
                cr, cg, cb = sky_half[0, i, j], sky_half[1, i, j], sky_half[2, i, j]
                if with_depth:
                    depth[r, a] = np.inf
            else:
                te = tan_el[r]
                kp = max(k - 1, 0)
                s_prev = packed[a, kp, 0]
                span = packed[a, k, 0] - s_prev
                # Where the ray crosses the straight segment from the previous sample to the
                # hit (0..1); at k = 0 the span is 0 and the ray takes the first sample.
                f = (te - s_prev) / max(span, F32(1e-12))
                if span <= F32(1e-12):
                    f += F32(1.0)
                f = min(max(f, F32(0.0)), F32(1.0))
                dist = t[kp] + (t[k] - t[kp]) * f
                if k == 0:
                    # Rays steeper than the first sample meet the ground before it: take the
                    # ground as level at that sample's height there (sharp straight down).
                    dist = t[0] * min(max(packed[a, 0, 0] / min(te, F32(-1e-6)), F32(0.0)), F32(1.0))
                hz = packed[a, kp, 1] + (packed[a, k, 1] - packed[a, kp, 1]) * f
                cr = packed[a, kp, 2] + (packed[a, k, 2] - packed[a, kp, 2]) * f
                cg = packed[a, kp, 3] + (packed[a, k, 3] - packed[a, kp, 3]) * f
                cb = packed[a, kp, 4] + (packed[a, k, 4] - packed[a, kp, 4]) * f
                if dist < fade32:
                    # Close ground: a fine brightness texture that fades out with distance.
                    d = min(dist, fade32) * inv_detail
                    b = bilinear(detail, detail_m, x_d + d * sin_az[a], z_d + d * cos_az[a])
                    b = (b - F32(1.0)) * max(F32(1.0) - dist * fade_inv, F32(0.0)) + F32(1.0)
                    cr, cg, cb = cr * b, cg * b, cb * b
                ray_h = eye32 + te * dist  # height where the ray meets the ground
                if ray_h < wl:
                    cr, cg, cb = _water(cr, cg, cb, hz, (wl - ray_h) * F32(6.0), r, a, water, row_water,
                                        col_water, ripple_bin, detail, detail_m, haze)
                if with_depth:
                    depth[r, a] = dist / cos_el[r]
            words[r, a] = _quantise(cr) | (_quantise(cg) << 8) | (_quantise(cb) << 16)


@njit(cache=True, nogil=True, inline="always")
def _quantise(c):
    q = c * F32(255.0) + F32(0.5)
    return np.uint32(min(max(q, F32(0.0)), F32(255.0)))


@njit(cache=True, nogil=True)
def _water(cr, cg, cb, hz, wet, r, a, water, row_water, col_water, ripple_bin, detail, m, haze):
    """Sky reflection and sun glitter on a cell whose ray meets the water (wet > 0); new r, g, b."""
    wet = min(wet, F32(1.0))
    sin_down, fresnel, cos_down = row_water[r, 0], row_water[r, 1], row_water[r, 2]
    ripple = F32(0.97) + F32(0.03) * detail[((r * 7) % m) * m + ripple_bin[a]]
    cos_g = cos_down * col_water[a] + sin_down * water[1]
    cos_g = max(cos_g, F32(0.0)) * ripple
    g12 = power(cos_g, 12)
    glitter = (power(g12, 10) * F32(3.0) + g12 * F32(0.3)) * water[2]
    mix = fresnel * wet
    refl = row_water[r, 3] + water[3] * glitter
    cr += (refl + (haze[0, a] - refl) * hz - cr) * mix
    refl = row_water[r, 4] + water[4] * glitter
    cg += (refl + (haze[1, a] - refl) * hz - cg) * mix
    refl = row_water[r, 5] + water[5] * glitter
    cb += (refl + (haze[2, a] - refl) * hz - cb) * mix
    return cr, cg, cb


@njit(cache=True, nogil=True)
def sky_cells(rows, cols, params, edge, cover, m, out):
    """Gradient, sun glow, stars, sun disc and clouds of every (row, column) cell into out (3, R, A).

    rows: (R, 9) and cols: (A, 4) terms named in sky.ROW_TERMS and sky.COL_TERMS; params: horizon,
    zenith, glow, sun and cloud colours, glow gain, star strength, disc brightness, clouds
    on (1) or off (0), camera (u, v) in cloud texels; edge: cos(sun radius); cover: (m*m,)
    cloud coverage.
    """
    f = np.float32
    disc_gain = f(6.0 / (1.0 - edge))
    edge = f(edge)
    zero, one = f(0.0), f(1.0)
    for r in range(rows.shape[0]):
        sin_el, cos_el, t, below = rows[r, 0], rows[r, 1], rows[r, 2], rows[r, 3]
        fade = one - f(0.25) * below
        glow_row = (one - f(0.6) * t) * params[15]
        base0 = (params[0] * (one - t) + params[3] * t) * fade
        base1 = (params[1] * (one - t) + params[4] * t) * fade
        base2 = (params[2] * (one - t) + params[5] * t) * fade
        stars = params[16] > 0 and sin_el > f(0.02)
        disc_row = params[17] > 0 and rows[r, 5] > 0
        cloud_row = params[18] > 0 and rows[r, 6] > 0
        for a in range(cols.shape[0]):
            cos_g = cos_el * cols[a, 0] + rows[r, 4]
            p6 = power(max(cos_g, zero), 6)
            glow = (f(0.3) * p6 + f(0.35) * power(p6, 8)) * glow_row
            c0 = base0 + params[6] * glow
            c1 = base1 + params[7] * glow
            c2 = base2 + params[8] * glow
            if stars:
                h = (np.int64(rows[r, 8]) * 73856093) ^ (np.int64(cols[a, 3]) * 19349663)
                h = (h ^ (h >> 13)) * 1274126177
                h = (h ^ (h >> 16)) & 0xFFFF
                if h < 90:
                    bright = (f(h) / f(90.0) * f(0.8) + f(0.2)) * params[16]
                    c0, c1, c2 = c0 + bright, c1 + bright, c2 + bright
            if disc_row:
                disc = min(max((cos_g - edge) * disc_gain, zero), one) * params[17]
                halo = power(max(cos_g, zero), 600) * f(0.5)
                c0 += disc * (params[9] * f(0.5) + f(0.6)) + halo * params[6]
                c1 += disc * (params[10] * f(0.5) + f(0.6)) + halo * params[7]
                c2 += disc * (params[11] * f(0.5) + f(0.6)) + halo * params[8]
            if cloud_row:
                dist = rows[r, 7]
                amount = bilinear(cover, m, params[19] + dist * cols[a, 1],
                                          params[20] + dist * cols[a, 2]) * rows[r, 6]
                shade = one - f(0.28) * amount + f(0.25) * power(p6, 2)
                mix = amount * f(0.92)
                c0 += (params[12] * shade - c0) * mix
                c1 += (params[13] * shade - c1) * mix
                c2 += (params[14] * shade - c2) * mix
            out[0, r, a], out[1, r, a], out[2, r, a] = c0, c1, c2


@njit(cache=True, nogil=True)
def cells_to_pixels(words, pixel_cell, out):
    """Copy each pixel's cell colour: words (R, A) uint32 RGBX; pixel_cell (H*W,) flat index
    row * A + col; out (H*W*3,) uint8 RGB."""
    flat = words.reshape(-1)
    for p in range(pixel_cell.shape[0]):
        w = flat[pixel_cell[p]]
        out[3 * p] = w & 0xFF
        out[3 * p + 1] = (w >> 8) & 0xFF
        out[3 * p + 2] = (w >> 16) & 0xFF
