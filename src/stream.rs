//! Sending a stream of batches: [`TransferIpc`].

use std::future::Future;

use futures::{Stream, StreamExt};

use crate::packet::AsIpcPacket;
use crate::server::ConnectedIpc;
use crate::Result;

/// Sends every batch of a stream over a connection.
pub trait TransferIpc {
    /// Sends each batch the stream yields, then closes the connection; resolves to the
    /// number of packets sent.
    fn transfer_ipc(self, connection: ConnectedIpc) -> impl Future<Output = Result<usize>>;
}

impl<S, T> TransferIpc for S
where
    S: Stream<Item = Vec<T>>,
    T: AsIpcPacket,
{
    async fn transfer_ipc(self, mut connection: ConnectedIpc) -> Result<usize> {
        let mut stream = std::pin::pin!(self);
        let mut sent = 0;
        while let Some(batch) = stream.next().await {
            connection.send(&batch)?;
            sent += batch.len();
        }
        connection.close()?;
        Ok(sent)
    }
}
