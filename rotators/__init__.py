"""Rotator plugins shipped with rotator; each registers under `rotator.rotators`."""
