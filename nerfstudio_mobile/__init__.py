"""nerfstudio-mobile: toolkit code (common/, data/, export/, demo/) and the MobileR2L method (mobile_r2l/)."""

from nerfstudio_mobile.common.plugin import set_up

set_up()
