"""The vocabulary: every token and its id, in one place that the configuration, the encoding and the model's
positions all read (this file imports nothing).

Ids 0..297 are musicautobot's (specials, notes ``n0``..``n127``, durations ``d0``..``d160``); 298 ``xxunk``,
299..378 the time signatures and 379..382 the task tokens (``tasks_music_xl.py``) were added here. A vocabulary
saved before time signatures has ids 0..298 (``LEGACY_VOCAB_SIZE``), one saved before the task tokens 0..378
(``METER_VOCAB_SIZE``): the one place those sizes are defined; the tokenizer and configuration read them to load
such models as they were.

This file is copied next to saved weights for ``trust_remote_code`` loading, with its siblings.
"""

SPECIAL_TOKENS = ["xxbos", "xxpad", "xxeos", "xxs2scls", "xxmask", "xxcseq", "xxmseq", "xxnscls", "xxsep"]
BOS_ID, PAD_ID, EOS_ID, SEP_ID = 0, 1, 2, 8
NOTE_OFFSET, NUM_PITCHES = 9, 128
DURATION_OFFSET, NUM_DURATIONS = 137, 161
MAX_DURATION = NUM_DURATIONS - 1
UNK_ID = DURATION_OFFSET + NUM_DURATIONS  # 298
# Time signatures, after xxunk: every numerator 1..16 over each denominator (2/4, 3/4, 6/8, 3/2, 12/8, 5/4, ...).
METER_DENOMINATORS = (1, 2, 4, 8, 16)
MAX_METER_NUMERATOR = 16
METERS = [(num, den) for den in METER_DENOMINATORS for num in range(1, MAX_METER_NUMERATOR + 1)]
METER_OFFSET = UNK_ID + 1  # 299
LEGACY_VOCAB_SIZE = METER_OFFSET  # vocabularies saved before time signatures: ids 0..298
DEFAULT_METER = (4, 4)  # MIDI's meter when a file has no time signature
# Task tokens, after the time signatures: the layouts of bar infilling and harmonization (tasks_music_xl.py).
# xxgiven opens notes given to the model and xxback closes them, moving time back to where xxgiven stood; a task
# token follows ``xxbos xxpad`` and says which layout the piece is in.
TASK_TOKENS = ["xxgiven", "xxback", "xxinfill", "xxharmonize"]
TASK_OFFSET = METER_OFFSET + len(METERS)  # 379
GIVEN_ID, BACK_ID, INFILL_ID, HARMONIZE_ID = range(TASK_OFFSET, TASK_OFFSET + len(TASK_TOKENS))
METER_VOCAB_SIZE = TASK_OFFSET  # vocabularies saved before the task tokens: ids 0..378
VOCAB = (
    SPECIAL_TOKENS
    + [f"n{pitch}" for pitch in range(NUM_PITCHES)]
    + [f"d{steps}" for steps in range(NUM_DURATIONS)]
    + ["xxunk"]
    + [f"ts{num}/{den}" for num, den in METERS]
    + TASK_TOKENS
)
VOCAB_SIZE = len(VOCAB)  # 383
TOKEN_TO_ID = {token: index for index, token in enumerate(VOCAB)}
