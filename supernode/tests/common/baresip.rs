//! baresip 1.0 as a scripted user agent: one config folder per UA, a tone as its
//! microphone, and its decoded recording read back to check who it heard.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Writes a 16-bit mono WAV of a sine tone.
pub fn write_tone(path: &Path, freq: f32, rate: u32, seconds: f32) {
    let n = (rate as f32 * seconds) as usize;
    let mut data = Vec::with_capacity(44 + n * 2);
    let byte_rate = rate * 2;
    data.extend_from_slice(b"RIFF");
    data.extend_from_slice(&(36 + n as u32 * 2).to_le_bytes());
    data.extend_from_slice(b"WAVEfmt ");
    data.extend_from_slice(&16u32.to_le_bytes());
    data.extend_from_slice(&1u16.to_le_bytes()); // PCM
    data.extend_from_slice(&1u16.to_le_bytes()); // mono
    data.extend_from_slice(&rate.to_le_bytes());
    data.extend_from_slice(&byte_rate.to_le_bytes());
    data.extend_from_slice(&2u16.to_le_bytes());
    data.extend_from_slice(&16u16.to_le_bytes());
    data.extend_from_slice(b"data");
    data.extend_from_slice(&(n as u32 * 2).to_le_bytes());
    for i in 0..n {
        let v =
            (0.3 * (std::f32::consts::TAU * freq * i as f32 / rate as f32).sin() * 32767.0) as i16;
        data.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, data).expect("write wav");
}

/// Reads channel 0 of a 16-bit PCM WAV as f32, with its sample rate.
pub fn read_wav(path: &Path) -> (Vec<f32>, u32) {
    let bytes = std::fs::read(path).expect("read wav");
    let mut pos = 12;
    let (mut channels, mut rate, mut samples) = (1usize, 8000u32, Vec::new());
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let len = u32::from_le_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]) as usize;
        let body = &bytes[pos + 8..(pos + 8 + len).min(bytes.len())];
        if id == b"fmt " && body.len() >= 16 {
            channels = usize::from(u16::from_le_bytes([body[2], body[3]])).max(1);
            rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
        } else if id == b"data" {
            samples = body
                .chunks_exact(2 * channels)
                .map(|f| f32::from(i16::from_le_bytes([f[0], f[1]])) / 32768.0)
                .collect();
        }
        pos += 8 + len + (len & 1);
    }
    (samples, rate)
}

/// Power of `freq` in `samples` relative to full scale (Goertzel).
pub fn tone_power(samples: &[f32], rate: u32, freq: f32) -> f32 {
    mixer::signal::goertzel_power(samples, rate, freq)
}

/// Mean Goertzel power of `freq` over consecutive 100 ms blocks of `samples`: robust
/// where one long window is not (a re-added leg restarts the stream's phase, and the
/// jitter buffer drops or stretches a frame now and then, which smears a long window's
/// narrow bin).
pub fn block_tone_power(samples: &[f32], rate: u32, freq: f32) -> f32 {
    let block = (rate / 10).max(1) as usize;
    let blocks: Vec<f32> = samples
        .chunks_exact(block)
        .map(|b| tone_power(b, rate, freq))
        .collect();
    if blocks.is_empty() {
        return 0.0;
    }
    blocks.iter().sum::<f32>() / blocks.len() as f32
}

/// One baresip user agent.
pub struct Ua {
    /// Its folder (config, accounts, recordings).
    pub dir: PathBuf,
    child: Option<Child>,
    /// The UDP port of its command console (`cons.so`), if enabled.
    console: Option<u16>,
}

impl Ua {
    /// Prepares a UA that registers `user` (password `secret`) at `registrar`, sends a
    /// tone of `freq` Hz and records what it hears. `codec` is `opus/48000/2` or `pcmu`.
    pub fn new(
        root: &Path,
        user: &str,
        registrar: SocketAddr,
        transport: &str,
        freq: f32,
        codec: &str,
        port: u16,
    ) -> Ua {
        let dir = root.join(user);
        std::fs::create_dir_all(dir.join("rec")).expect("mkdir");
        write_tone(&dir.join("send.wav"), freq, 48_000, 30.0);
        let rtp = 20_000 + (port % 1000) * 10;
        let config = format!(
            "poll_method epoll\nsip_listen 127.0.0.1:{port}\nnet_interface 127.0.0.1\n\
             audio_source aufile,{send}\naudio_player alsa,null\naudio_alert alsa,null\n\
             ausrc_srate 48000\nauplay_srate 48000\nausrc_channels 1\nauplay_channels 1\n\
             rtp_ports {rtp}-{rtp_hi}\nstatmode_default off\nsnd_path {rec}\n\
             module_path /usr/lib/baresip/modules\nmodule opus.so\nmodule g711.so\n\
             module sndfile.so\nmodule aufile.so\nmodule alsa.so\nmodule_tmp uuid.so\n\
             module_tmp account.so\nmodule_app menu.so\n",
            send = dir.join("send.wav").display(),
            rec = dir.join("rec").display(),
            rtp_hi = rtp + 9,
        );
        std::fs::write(dir.join("config"), config).expect("config");
        let account = format!(
            "<sip:{user}@{registrar};transport={transport}>;auth_pass=secret;regint=600;\
             answermode=auto;audio_codecs={codec};medianat=;mediaenc=\n"
        );
        std::fs::write(dir.join("accounts"), account).expect("accounts");
        std::fs::write(dir.join("contacts"), "").expect("contacts");
        Ua {
            dir,
            child: None,
            console: None,
        }
    }

    /// Enables baresip's UDP command console on `port` (before [`Ua::start`]), so
    /// commands can be given during a call with [`Ua::command`]: `-e` commands all run
    /// at start-up, before any call exists.
    pub fn with_console(mut self, port: u16) -> Ua {
        use std::io::Write as _;
        let mut config = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("config"))
            .expect("config");
        write!(config, "module cons.so\ncons_listen 127.0.0.1:{port}\n").expect("config");
        self.console = Some(port);
        self
    }

    /// Runs one menu command through the console, e.g. `/sndcode 4321#` (the digits as
    /// RFC 4733 events in the current call).
    pub fn command(&self, command: &str) {
        let port = self.console.expect("Ua::with_console was not called");
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket
            .send_to(format!("{command}\n").as_bytes(), ("127.0.0.1", port))
            .expect("send to the baresip console");
    }

    /// Waits (at most `timeout`) until its console output contains `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts baresip for `seconds`, running `commands` (e.g. `/dial sip:...`).
    pub fn start(&mut self, seconds: u32, commands: &[String]) {
        let mut cmd = Command::new("baresip");
        cmd.arg("-4")
            .arg("-f")
            .arg(&self.dir)
            .arg("-t")
            .arg(seconds.to_string());
        for c in commands {
            cmd.arg("-e").arg(c);
        }
        let log = std::fs::File::create(self.dir.join("out.log")).expect("log");
        let err = log.try_clone().expect("log");
        self.child = Some(
            cmd.stdin(Stdio::null())
                .stdout(log)
                .stderr(err)
                .spawn()
                .expect("baresip is not installed: run scripts/ensure-deps.sh"),
        );
    }

    /// Waits for it to quit (it quits after its `-t` seconds).
    pub fn wait(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// Its console output.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("out.log")).unwrap_or_default()
    }

    /// The decoded recording of its call (the last one if several).
    pub fn heard(&self) -> (Vec<f32>, u32) {
        let mut decs: Vec<PathBuf> = std::fs::read_dir(self.dir.join("rec"))
            .expect("rec dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with("-dec.wav"))
            .collect();
        decs.sort();
        let path = decs
            .pop()
            .unwrap_or_else(|| panic!("no recording; log:\n{}", self.log()));
        read_wav(&path)
    }
}

impl Drop for Ua {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
