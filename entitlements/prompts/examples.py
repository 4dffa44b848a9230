"""The prompting guide's own examples, verbatim (shared/seed/video-generation.md): the rules are held to
them (tests/unit/entitlements/prompts/) and measured on them (bench/advice/).

Every ✅ example must get no warning; each ❌ example ("don't") must get its code.
"""

from __future__ import annotations

from entitlements.prompts.advice import Code

# "Example Prompts": whole prompts, each shorter than 50 words (so their only advice is the length tip).
EXAMPLE_PROMPTS: dict[str, str] = {
    "simple & effective": (
        "She brushes hair behind her ear with a soft smile, gentle breeze, smooth and natural motion. No distortion."
    ),
    "with camera movement": (
        "Slow dolly push-in. She looks up toward the camera with a warm, inviting expression, lips parting "
        "slightly. Hair shifts gently. No jitter, face stable."
    ),
    "complex sequential action": (
        "She glances down at her phone and her eyes widen with surprise, then she looks up at camera with "
        "excitement and laughs softly. Camera holds still. No distortion, no deformation."
    ),
}
# The ✅ fragments of "Key Principles" and "Prompting With Audio".
GOOD_FRAGMENTS: tuple[str, ...] = (
    "She slowly turns her head and smiles, hair swaying gently in a breeze",
    "Leans forward slightly, eyes narrowing with a playful expression",
    "Slowly brushes hair behind her ear",
    "Gentle breeze lifts her hair, subtle movement",
    "Quickly glances over her shoulder",
    "Slow dolly push-in",
    "Smooth pan to the right",
    "Camera holds still",
    "She slowly turns her head to the right. Camera holds fixed framing.",
    "Camera slowly pushes in. She holds her pose, only her hair moves in the wind.",
    "Looks down at her phone with a surprised expression, then looks up at the camera with excitement, gasps softly",
    "Takes a sip of coffee, sets the cup down, then glances out the window with a thoughtful expression",
    "No distortion. No jitter. Face stable, no deformation.",
    "She softly whispers 'Hey, I missed you'",
    "She whispers softly",
)
# The ❌ examples, each with the code the guide's reason for it maps to.
DONT_EXAMPLES: dict[str, Code] = {
    "A woman standing on a beach in a red dress at sunset": "scene_description",
    "Moves": "vague_motion",
    "Dolly in while panning left and tilting up": "several_camera_movements",
    "Everything moving at once": "vague_motion",
    # "Things to Avoid": Vague motion ("she moves").
    "she moves": "vague_motion",
}
