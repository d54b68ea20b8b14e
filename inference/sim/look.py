"""How a sim world looks (light, sky, palette, weather), derived from a prompt and a start image."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import numpy as np

Colour = tuple[float, float, float]  # display RGB in [0, 1]


@dataclass(kw_only=True)
class Look:
    """Everything a prompt may change; terrain shape and camera position are not in here."""

    sun_azimuth_deg: float = 55.0  # sun (or moon) heading, degrees from +z towards +x
    sun_elevation_deg: float = 38.0  # sun height above the horizon
    sun_colour: Colour = (1.0, 0.96, 0.88)  # direct light colour
    sun_strength: float = 1.05  # direct light multiplier
    sun_disc: float = 1.0  # brightness of the visible disc (0 hides it)
    ambient: Colour = (0.42, 0.5, 0.62)  # sky light reaching shaded ground
    sky_zenith: Colour = (0.22, 0.43, 0.78)  # sky colour straight up
    sky_horizon: Colour = (0.7, 0.8, 0.9)  # sky colour at the horizon (also the haze)
    glow: Colour = (1.0, 0.93, 0.78)  # halo colour around the sun
    fog_density: float = 0.00045  # haze extinction per metre at water level
    fog_height_m: float = 220.0  # haze thins by e every this many metres of altitude
    cloud_cover: float = 0.42  # fraction of the sky under cloud
    cloud_colour: Colour = (0.98, 0.98, 1.0)  # lit side of the clouds
    stars: float = 0.0  # star field brightness
    water_level_m: float = 0.0  # lakes fill everything below this height
    water_colour: Colour = (0.1, 0.27, 0.33)  # deep-water body colour
    grass: Colour = (0.3, 0.47, 0.17)  # lush meadow
    grass_dry: Colour = (0.54, 0.54, 0.28)  # sunburnt meadow patches
    forest: Colour = (0.13, 0.3, 0.12)  # tree canopy seen from afar
    rock: Colour = (0.47, 0.44, 0.41)  # cliffs and steep slopes
    sand: Colour = (0.8, 0.72, 0.52)  # beaches and dunes
    snow: Colour = (0.93, 0.95, 0.98)  # snow cover
    forest_amount: float = 0.35  # 0 bare meadows .. 1 mostly forest
    snow_amount: float = 0.15  # 0 none .. 1 snow down to the water
    sand_amount: float = 0.0  # 0 green land .. 1 desert


# Each theme overrides some fields; active themes average the fields they share.
THEMES: dict[str, dict] = {
    "night": dict(
        sun_azimuth_deg=-30.0, sun_elevation_deg=32.0, sun_colour=(0.55, 0.65, 0.95),
        sun_strength=0.3, sun_disc=0.5, ambient=(0.07, 0.09, 0.17), sky_zenith=(0.01, 0.02, 0.06),
        sky_horizon=(0.06, 0.09, 0.17), glow=(0.4, 0.45, 0.6), cloud_colour=(0.16, 0.18, 0.26),
        stars=1.0, water_colour=(0.02, 0.05, 0.09), fog_density=0.0003),
    "sunset": dict(
        sun_azimuth_deg=-18.0, sun_elevation_deg=4.0, sun_colour=(1.0, 0.55, 0.25),
        sun_strength=1.2, ambient=(0.5, 0.4, 0.5), sky_zenith=(0.17, 0.2, 0.45),
        sky_horizon=(0.98, 0.6, 0.38), glow=(1.0, 0.55, 0.22), cloud_colour=(1.0, 0.62, 0.5),
        water_colour=(0.12, 0.12, 0.2), fog_density=0.0006),
    "dawn": dict(
        sun_azimuth_deg=20.0, sun_elevation_deg=6.0, sun_colour=(1.0, 0.72, 0.55),
        sun_strength=0.95, ambient=(0.4, 0.38, 0.5), sky_zenith=(0.3, 0.38, 0.62),
        sky_horizon=(0.96, 0.74, 0.66), glow=(1.0, 0.7, 0.5), cloud_colour=(1.0, 0.78, 0.74),
        fog_density=0.0008),
    "snow": dict(
        snow_amount=1.0, grass=(0.88, 0.9, 0.95), grass_dry=(0.8, 0.83, 0.88),
        forest=(0.16, 0.24, 0.2), sky_horizon=(0.8, 0.85, 0.92), ambient=(0.5, 0.56, 0.68),
        water_colour=(0.45, 0.55, 0.62), fog_density=0.0007, cloud_cover=0.55),
    "desert": dict(
        sand_amount=1.0, forest_amount=0.02, snow_amount=0.0, water_level_m=-25.0,
        sand=(0.87, 0.68, 0.42), rock=(0.66, 0.42, 0.28), grass=(0.82, 0.63, 0.4),
        grass_dry=(0.9, 0.74, 0.5), sky_zenith=(0.3, 0.5, 0.82), sky_horizon=(0.92, 0.86, 0.74),
        sun_colour=(1.0, 0.94, 0.82), sun_strength=1.2, ambient=(0.5, 0.46, 0.45),
        cloud_cover=0.1, fog_density=0.00035),
    "forest": dict(
        forest_amount=0.9, grass=(0.26, 0.5, 0.16), grass_dry=(0.4, 0.55, 0.2),
        forest=(0.08, 0.26, 0.09), fog_density=0.0007),
    "water": dict(water_level_m=12.0, sand=(0.78, 0.72, 0.55), water_colour=(0.03, 0.3, 0.42)),
    "fog": dict(
        fog_density=0.004, fog_height_m=500.0, sky_horizon=(0.78, 0.8, 0.82), ambient=(0.5, 0.52, 0.56),
        sky_zenith=(0.6, 0.64, 0.7), sun_strength=0.65, sun_disc=0.35, cloud_cover=0.75),
    "autumn": dict(
        grass=(0.6, 0.5, 0.22), grass_dry=(0.72, 0.48, 0.18), forest=(0.6, 0.24, 0.07)),
    "storm": dict(
        cloud_cover=0.95, cloud_colour=(0.42, 0.44, 0.48), sky_zenith=(0.3, 0.33, 0.38),
        sky_horizon=(0.52, 0.55, 0.58), sun_strength=0.45, sun_disc=0.0, ambient=(0.36, 0.38, 0.42),
        fog_density=0.0012),
}

# Prompt words for each theme; a word may take a plural or -y ending ("snowy", "dunes").
THEME_WORDS: dict[str, tuple[str, ...]] = {
    "night": ("night", "midnight", "moon", "starry", "stars", "dark"),
    "sunset": ("sunset", "dusk", "evening", "golden hour", "twilight"),
    "dawn": ("dawn", "sunrise", "morning"),
    "snow": ("snow", "winter", "ice", "icy", "frozen", "arctic", "glacier"),
    "desert": ("desert", "sand", "dune", "arid", "sahara", "canyon"),
    "forest": ("forest", "jungle", "green", "wood", "tree", "rainforest", "lush"),
    "water": ("ocean", "sea", "beach", "island", "lake", "coast", "shore", "bay", "river"),
    "fog": ("fog", "foggy", "mist", "haze", "hazy", "smog"),
    "autumn": ("autumn", "fall foliage", "fall colors", "fall colours"),
    "storm": ("storm", "rain", "overcast", "cloudy", "thunder"),
}


def prompt_themes(prompt: str) -> list[str]:
    """Themes whose words appear in the prompt, in THEMES order."""
    text = prompt.lower()
    found = []
    for theme, words in THEME_WORDS.items():
        if any(re.search(r"\b" + re.escape(w) + r"(s|es|y)?\b", text) for w in words):
            found.append(theme)
    return found


GROUND_FIELDS = frozenset({"grass", "grass_dry", "forest", "rock", "sand", "snow", "forest_amount",
                           "snow_amount", "sand_amount"})
# Where themes share a field, the one that owns it wins: snow and desert own the ground
# ("snowy forest": white ground, green trees), times of day and weather own the light
# ("desert at night" is dark). Themes of equal rank average.
GROUND_THEMES = frozenset({"snow", "desert"})
LIGHT_THEMES = frozenset({"night", "sunset", "dawn", "storm", "fog"})


def _rank(theme: str, field_name: str) -> int:
    if field_name in GROUND_FIELDS:
        return 2 if theme in GROUND_THEMES else 1
    return 2 if theme in LIGHT_THEMES else 1


def look_from_prompt(prompt: str) -> Look:
    """The default daylight meadow changed by every theme the prompt names."""
    themes = prompt_themes(prompt)
    base = Look()
    values = {}
    for f in dataclasses.fields(Look):
        setters = [t for t in themes if f.name in THEMES[t]]
        top = max((_rank(t, f.name) for t in setters), default=0)
        picks = [THEMES[t][f.name] for t in setters if _rank(t, f.name) == top]
        if picks:
            values[f.name] = _average(picks)
    if "night" in themes and ("sunset" in themes or "dawn" in themes):
        values["stars"] = 0.5  # twilight: the first stars only
    return dataclasses.replace(base, **values)


def _average(values: list) -> float | Colour:
    arr = np.mean(np.asarray(values, dtype=np.float64), axis=0)
    return float(arr) if arr.ndim == 0 else tuple(float(v) for v in arr)


@dataclass(kw_only=True)
class ImagePalette:
    """Colours taken from a start image: its sky from the top, its ground from the bottom."""

    sky_top: Colour  # mean colour of the top tenth
    sky_low: Colour  # mean colour of the band at 25-40% height
    ground: tuple[Colour, Colour, Colour]  # dark, middle and bright thirds of the bottom 40%


def palette_from_image(image: np.ndarray) -> ImagePalette:
    """Read sky and ground colours from an (H, W, 3) uint8 start image."""
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 4 or image.shape[1] < 1:
        raise ValueError(f"start image must be (H>=4, W, 3), got shape {image.shape}")
    img = image.astype(np.float32) / 255.0
    h = img.shape[0]
    sky_top = img[: max(1, h // 10)].reshape(-1, 3).mean(axis=0)
    sky_low = img[int(h * 0.25): max(int(h * 0.4), int(h * 0.25) + 1)].reshape(-1, 3).mean(axis=0)
    ground = img[int(h * 0.6):].reshape(-1, 3)
    order = np.argsort(ground @ np.array([0.3, 0.59, 0.11], np.float32), kind="stable")
    thirds = np.array_split(ground[order], 3)
    means = [tuple(float(v) for v in (part.mean(axis=0) if len(part) else ground.mean(axis=0)))
             for part in thirds]
    return ImagePalette(sky_top=_colour(sky_top), sky_low=_colour(sky_low),
                        ground=(means[0], means[1], means[2]))


def _colour(v: np.ndarray) -> Colour:
    return (float(v[0]), float(v[1]), float(v[2]))


def _mix(a: Colour, b: Colour, w: float) -> Colour:
    return tuple(float(x + (y - x) * w) for x, y in zip(a, b))  # type: ignore[return-value]


def apply_palette(look: Look, palette: ImagePalette | None, weight: float = 0.7) -> Look:
    """Pull the look's sky and ground colours `weight` of the way toward the image's."""
    if palette is None:
        return look
    dark, mid, bright = palette.ground
    return dataclasses.replace(
        look,
        sky_zenith=_mix(look.sky_zenith, palette.sky_top, weight),
        sky_horizon=_mix(look.sky_horizon, palette.sky_low, weight),
        forest=_mix(look.forest, dark, weight),
        grass=_mix(look.grass, mid, weight),
        grass_dry=_mix(look.grass_dry, bright, weight),
        sand=_mix(look.sand, bright, weight * 0.5),
        rock=_mix(look.rock, mid, weight * 0.4),
    )
