// SPDX-License-Identifier: GPL-2.0

//! Definitions shared between the driver's files, as C's `vfio_pci_priv.h`.
