#!/usr/bin/env bash
# Sizing harness: CPU cost per live stream of `livewatch serve`, against plain libavcodec
# decoding of the same video by the ffmpeg tool (the reference), in one run.
#
#   benches/streams.sh [STREAMS] [SECONDS] [keyframes|fps] [WIDTHxHEIGHT]
#
# livewatch replays STREAMS copies of a 30 fps H.264 clip in real time for SECONDS; its CPU
# time (user+sys from /proc) is compared with `ffmpeg -threads 1` decoding the same amount of
# video (keyframes only, as livewatch does in keyframes mode, or every frame in fps mode).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-16}
SECS=${2:-30}
MODE=${3:-keyframes}
SIZE=${4:-1280x720}
BIN=target/release/livewatch
[ -x "$BIN" ] || cargo build --release --locked
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT

clip="$work/clip.mp4"
ffmpeg -hide_banner -loglevel error -f lavfi -i "testsrc2=size=$SIZE:rate=30" -t 10 \
  -c:v libx264 -preset veryfast -profile:v high -pix_fmt yuv420p -g 30 -keyint_min 30 -sc_threshold 0 -bf 0 "$clip"
echo "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22" > "$work/bank.pdq"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
{
  echo "[server]"; echo "listen = \"127.0.0.1:$port\""
  echo "[sampling]"; echo "mode = \"$MODE\""; echo "rate = 2.0"
  echo "[[banks]]"; echo "name = \"b\""; echo "path = \"bank.pdq\""
  for i in $(seq 1 "$N"); do echo "[[streams]]"; echo "id = \"s$i\""; echo "url = \"file://$clip\""; done
} > "$work/c.toml"

"$BIN" serve --config "$work/c.toml" 2>"$work/log" &
pid=$!
sleep 3  # start-up, excluded
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' "/proc/$pid/stat"; }
m() { curl -s "http://127.0.0.1:$port/metrics" | awk -v k="$1" '$1==k {print $2}'; }
c0=$(cpu); h0=$(m livewatch_frames_hashed_total); d0=$(m livewatch_frames_decoded_total)
sleep "$SECS"
c1=$(cpu); h1=$(m livewatch_frames_hashed_total); d1=$(m livewatch_frames_decoded_total)
drops=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^livewatch_frames_dropped_total/ {s+=$2} END {print s+0}')
kill -TERM $pid; wait $pid || true
lw_cpu=$(echo "($c1 - $c0) / $ticks" | bc -l)

# the reference: the same seconds of video, decoded by ffmpeg on one thread, as fast as it can
loops=$(( (N * SECS + 9) / 10 - 1 ))
skip=""; [ "$MODE" = keyframes ] && skip="-skip_frame nokey"
TIMEFORMAT='%U %S'
ref=$( { time ffmpeg -hide_banner -loglevel error -threads 1 $skip -stream_loop "$loops" -i "$clip" -map 0:v -f null - ; } 2>&1 | tail -1)
ref_cpu=$(echo "$ref" | awk '{print $1+$2}')

printf 'streams=%d mode=%s size=%s seconds=%d\n' "$N" "$MODE" "$SIZE" "$SECS"
printf 'livewatch: %.2f CPU-s, %.1f %% of one core per stream, decoded %d, hashed %d frames, dropped %d\n' \
  "$lw_cpu" "$(echo "100 * $lw_cpu / $SECS / $N" | bc -l)" "$((d1 - d0))" "$((h1 - h0))" "$drops"
printf 'ffmpeg decode only (reference): %.2f CPU-s for the same %d s of video\n' "$ref_cpu" "$((N * SECS))"
printf 'ratio livewatch / decode-only: %.2f\n' "$(echo "$lw_cpu / $ref_cpu" | bc -l)"
