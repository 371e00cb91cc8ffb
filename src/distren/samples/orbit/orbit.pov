// distren's sample scene: four planets orbit a golden sun above a checkered floor.
// The clock runs from 0 to 1 over the animation; one run is one full orbit.
#version 3.7;
global_settings { assumed_gamma 1.0 max_trace_level 5 }

#include "colors.inc"
#include "orbit_materials.inc"

camera {
    location <0, 2.6, -7.6>
    look_at <0, 1.05, 0>
    angle 44
}

light_source { <-6, 10, -7> color rgb 1.0 }
light_source { <7, 5, -4> color rgb 0.35 shadowless }

sky_sphere {
    pigment {
        gradient y
        color_map { [0.0 color rgb <0.55, 0.65, 0.88>] [0.35 color rgb <0.06, 0.14, 0.45>] }
    }
}

plane { y, 0 texture { Floor_Texture } }

// The floor fades into the sky at the horizon.
fog { fog_type 2 distance 30 fog_offset 0 fog_alt 0.6 color rgb <0.55, 0.65, 0.88> }

// The sun, and a tilted ring around it.
sphere { <0, 1.2, 0>, 0.8 texture { Sun_Texture } }
torus { 1.2, 0.045 rotate <22, 0, 12> translate <0, 1.2, 0> texture { Ring_Texture } }

// The planets: evenly spaced, each bobbing as it goes round.
#declare Planets = 4;
#declare Orbit_Radius = 2.35;
#for (I, 0, Planets - 1)
    #declare Angle = 360 * (clock + I / Planets);
    #declare Height = 1.0 + 0.35 * sin(radians(2 * Angle));
    sphere {
        <Orbit_Radius, Height, 0>, 0.36
        Planet_Texture(Planet_Colours[I])
        rotate y * Angle
    }
#end
