// Plain-language names for what /healthz reports: models ("Voice changer", not `vc`) and shipped voices
// ("Female, high (302 Hz), British · v056", not an espeak-ng variant). Values sent to the server stay the ids.

const MODEL_NAMES = {
  vc: "Voice changer",
  pitch: "Pitch shifter (simple test)",
  tts: "Text to speech",
  avatar: "Talking avatar",
  video: "Text to video",
  testcard: "Test card (diagnostic)",
};

/** A model's name for people (its id where there is none). */
export function modelName(name) {
  return MODEL_NAMES[name] || name;
}

// espeak-ng voice variants the shipped voices were made from (speech/voices/!v in espeak-ng).
const FEMALE = new Set(["f1", "f2", "f3", "f4", "f5", "anika", "anikarobot", "annie", "belinda", "linda", "steph",
  "steph2", "steph3", "alicia", "andrea", "aunty", "victoria", "ljubica", "shelby", "jacky"]);
const MALE = new Set(["m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "andy", "boris", "david", "edward", "gustave",
  "iven", "iven2", "iven3", "john", "max", "michel", "norbert", "paul", "pedro", "quincy", "rob", "robert", "travis",
  "victor", "zac", "klatt", "klatt2", "klatt3", "klatt4", "benjamin", "denis", "hugo", "lee", "mario", "michael"]);
const ACCENTS = [ // longest first: "en-gb-scotland" before "en-gb"
  ["en-gb-x-gbclan", "British (Lancashire)"], ["en-gb-x-gbcwmd", "British (West Midlands)"],
  ["en-gb-x-rp", "British (RP)"], ["en-gb-scotland", "Scottish"], ["en-us-nyc", "American (New York)"],
  ["en-029", "Caribbean"], ["en-gb", "British"], ["en-us", "American"],
];

/** Female / male: as the voice says (voices from human recordings), else from its espeak-ng variant; or null. */
export function voiceGender(v) {
  if (v.gender === "female" || v.gender === "male") return v.gender;
  const variant = String(v.variant || (v.espeak_voice || "").split("+")[1] || "").toLowerCase();
  if (FEMALE.has(variant)) return "female";
  if (MALE.has(variant)) return "male";
  return null;
}

/** How high the voice sounds: from its measured median pitch, else from espeak-ng's 0-99 pitch setting. */
export function voiceHeight(v) {
  if (v.f0_hz) {
    const hz = Math.round(v.f0_hz);
    const word = hz < 110 ? "very low" : hz < 150 ? "low" : hz < 210 ? "medium" : hz < 270 ? "high" : "very high";
    return `${word} (${hz} Hz)`;
  }
  if (v.pitch != null) return v.pitch < 40 ? "lower" : v.pitch > 62 ? "higher" : "medium";
  return null;
}

function accent(v) {
  const code = String(v.language || (v.espeak_voice || "").split("+")[0] || "");
  const hit = ACCENTS.find(([prefix]) => code.startsWith(prefix));
  return hit ? hit[1] : null;
}

/** A label for a shipped voice from /healthz (`{id, espeak_voice?, pitch?, variant?, gender?, f0_hz?, language?}`). */
export function voiceLabel(v) {
  if (typeof v !== "object" || v === null) return String(v);
  const gender = voiceGender(v);
  const words = [gender ? gender[0].toUpperCase() + gender.slice(1) : "Voice", voiceHeight(v), accent(v)];
  return `${words.filter(Boolean).join(", ")} · ${v.id}`;
}
