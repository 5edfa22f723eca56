//! The per-frame fan-out path, in process: a booth's frame is checked, the rules pick its
//! channel, it is stamped once and put on the channel's queue, and every listener takes it
//! off and frames it as a WebSocket message (what each listener's task does before its write
//! system call). Sockets are left out: their cost is the kernel's, measured by `boothcast bench`.

use boothcast::config::Event;
use boothcast::protocol::{FrameHeader, Source, CHANNEL_UNSET};
use boothcast::relay::Relay;
use boothcast::rules::Command;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::sync::Arc;
use tokio_tungstenite::tungstenite::protocol::frame::{coding::Data, coding::OpCode, Frame};

fn fanout(c: &mut Criterion) {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/bench.toml")).unwrap();
    let mut group = c.benchmark_group("fanout");
    for listeners in [1usize, 100, 1000] {
        let event = Event::parse(&text, "bench.toml", &|_| None).unwrap();
        let relay = Relay::new(Arc::new(event));
        let (session, _control) = relay.register();
        relay.console_connect(session, 0, "1").unwrap();
        relay.command(session, Command::Live(None)).unwrap();
        let channel = relay.event().resolve_channel("bench/l0").unwrap();
        let mut receivers: Vec<_> = (0..listeners)
            .map(|_| relay.subscribe(channel, true))
            .collect();
        let frame = FrameHeader {
            source: Source::Interpreter,
            channel: CHANNEL_UNSET,
            sequence: 0,
            capture_us: 1,
            relay_us: 0,
            rms: 30,
            peak: 12,
        }
        .frame(&{
            let mut p = vec![0x55u8; 80];
            p[0] = 0xF8;
            p
        });
        let mut out = Vec::with_capacity(256);
        group.throughput(Throughput::Elements(listeners as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(listeners),
            &listeners,
            |b, _| {
                b.iter(|| {
                    relay.console_frame(session, &frame).unwrap();
                    for rx in receivers.iter_mut() {
                        let msg = rx.try_recv().unwrap();
                        out.clear();
                        Frame::message(msg, OpCode::Data(Data::Binary), true)
                            .format(&mut out)
                            .unwrap();
                    }
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
