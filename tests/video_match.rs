//! Live vPDQ matching on Meta's ThreatExchange sample videos: two originals banked as vPDQ
//! items (their published reference hashes), edited copies streamed over RTSP — greyed, with a
//! logo, with their starts cut — raise a `video_match` incident naming the right item; an
//! unrelated video raises none.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// The clip re-encoded for the RTSP test server: no B-frames, no audio, a keyframe every 2 s
/// (as the original), so only the edit differs from what a live encoder would send.
fn for_rtsp(videos: &Path, name: &str) -> PathBuf {
    let src = videos.join(format!("{name}.mp4"));
    let src = src.to_str().unwrap();
    // the test server takes raw H.264 elementary streams
    ffmpeg_clip(
        &format!("te-{name}.264"),
        &[
            "-i", src, "-an", "-c:v", "libx264", "-preset", "veryfast", "-bf", "0", "-g", "60",
            "-pix_fmt", "yuv420p", "-f", "h264",
        ],
    )
}

#[test]
fn edited_copies_of_banked_videos_raise_video_match_incidents_over_rtsp() {
    let Some(data) = threatexchange() else {
        eprintln!("\n*** SKIPPED: ThreatExchange videos (set LIVEWATCH_TESTDATA) ***\n");
        return;
    };
    let videos = data.join("videos");
    let streamed = [
        (
            "chair-grey",
            "chair-22-sd-grey-bar",
            Some("chair-orig-22-sd-bar"),
        ),
        (
            "chair-logo",
            "chair-22-with-small-logo-bar",
            Some("chair-orig-22-sd-bar"),
        ),
        ("chair-19", "chair-19-sd-bar", Some("chair-orig-22-sd-bar")),
        ("chair-20", "chair-20-sd-bar", Some("chair-orig-22-sd-bar")),
        (
            "pattern-logo",
            "pattern-sd-with-small-logo-bar",
            Some("pattern-sd-grey-bar"),
        ),
        ("doorknob", "doorknob-hd-no-bar", None),
    ];
    let clips: Vec<PathBuf> = streamed
        .iter()
        .map(|(_, name, _)| for_rtsp(&videos, name))
        .collect();
    let mounts: Vec<(&str, &Path)> = streamed
        .iter()
        .zip(&clips)
        .map(|((mount, _, _), clip)| (*mount, clip.as_path()))
        .collect();
    let server = RtspServer::start(free_port(), &mounts);

    // the bank: the two originals' published vPDQ files, one file per item
    let dir = tempfile::tempdir().unwrap();
    video_bank(
        dir.path(),
        &data,
        &["chair-orig-22-sd-bar", "pattern-sd-grey-bar"],
    );
    let receiver = Receiver::start(0);
    let mut config = format!(
        "[sampling]\nmode = \"fps\"\nrate = 5\n\n\
         [match]\nvideo_window_secs = 4\nvideo_min_percent = 80\nvideo_min_frames = 10\n\n\
         [alerts]\nupdate_interval_secs = 600\n\n\
         [[banks]]\nname = \"known-videos\"\nformat = \"vpdq\"\npath = \"known-videos\"\n\n\
         [[webhooks]]\nurl = \"{}\"\nsecret = \"{SECRET}\"\n",
        receiver.url()
    );
    for (mount, _, _) in &streamed {
        config.push_str(&format!(
            "\n[[streams]]\nid = \"{mount}\"\nurl = \"{}\"\n",
            server.url(mount)
        ));
    }
    let lw = Livewatch::start(dir, &config);

    let expected: Vec<_> = streamed.iter().filter(|s| s.2.is_some()).collect();
    let records = wait_for(120, "a video_match incident for each edited copy", || {
        let r = receiver.records();
        expected
            .iter()
            .all(|(mount, _, _)| {
                r.iter()
                    .any(|x| x["body"]["data"]["stream"]["id"] == *mount)
            })
            .then_some(r)
    });
    assert!(records.iter().all(|r| r["verified"] == true));
    for (mount, name, item) in &expected {
        let first = records
            .iter()
            .find(|x| x["body"]["data"]["stream"]["id"] == *mount)
            .unwrap();
        let d = &first["body"]["data"];
        assert_eq!(d["reason"], "video_match", "{mount}: {d:#}");
        assert_eq!(d["evidence"]["kind"], "video_match");
        assert_eq!(
            d["evidence"]["item_id"],
            item.unwrap(),
            "{mount} ({name}): {d:#}"
        );
        assert!(d["evidence"]["match_percent"].as_f64().unwrap() >= 80.0);
        println!(
            "{mount} ({name}) matched {} at {}% of {} frames, best distance {}, item coverage {}%",
            item.unwrap(),
            d["evidence"]["match_percent"],
            d["evidence"]["frames_in_window"],
            d["evidence"]["distance"],
            d["evidence"]["coverage_percent"]
        );
    }
    // the unrelated video was analysed all along and raised nothing
    wait_for(60, "30 frames of the unrelated video analysed", || {
        (lw.stream("doorknob")["frames_hashed"].as_u64()? >= 30).then_some(())
    });
    assert!(
        !receiver
            .records()
            .iter()
            .any(|x| x["body"]["data"]["stream"]["id"] == "doorknob"),
        "the unrelated video alerted"
    );
}
