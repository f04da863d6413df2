// SPDX-License-Identifier: GPL-2.0

//! read() and write() of BARs, the ROM and the VGA ranges, as `vfio_pci_rdwr.c`.
