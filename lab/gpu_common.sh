# Sourced by the ninth session's lab/gpu_*.sh on a lent GPU machine (carry .whl: decord, av, qwen-vl-utils): installs
# the wheels, sets the paths, and writes the 300 s 720p probe clip to /tmp/clip300.mp4 in the background ($writer;
# kept between calls while the machine stays warm).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:/tmp/site
( [ -f /tmp/clip300.mp4 ] || python3 -c "import sys; sys.path.insert(0, 'lab'); from reader_probe import write_clip; \
write_clip('/tmp/clip300.part.mp4', 300, 'ultrafast', 250)" && mv -f /tmp/clip300.part.mp4 /tmp/clip300.mp4 ) \
  > "$OUT/clip.log" 2>&1 &
writer=$!
